"""PUT/PATCH /machine-config body and the config file's `machine-config` section."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from sparkler.arch.x86_64.layout import DEFAULT_MEM_SIZE_MIB, DEFAULT_VCPU_COUNT, MAX_VCPUS
from sparkler.errors import ConfigError

U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
USIZE = Annotated[int, msgspec.Meta(ge=0, le=0x7FFF_FFFF_FFFF_FFFF)]  # msgspec bounds are int64
CpuTemplateName = Literal["C3", "T2", "T2S", "T2CL", "T2A", "None"]
HugePages = Literal["None", "Transparent", "2M"]

VCPU_COUNT_ERROR = (
    "The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."
)
MEM_SIZE_ERROR = "The memory size (MiB) is either 0, or not a multiple of the configured page size."


class MachineConfig(msgspec.Struct, forbid_unknown_fields=True):
    vcpu_count: U8 = DEFAULT_VCPU_COUNT
    mem_size_mib: USIZE = DEFAULT_MEM_SIZE_MIB
    smt: bool = False
    cpu_template: CpuTemplateName | None = None
    track_dirty_pages: bool = False
    huge_pages: HugePages = "None"

    def validate(self) -> None:
        if not 1 <= self.vcpu_count <= MAX_VCPUS or (self.smt and self.vcpu_count > 1 and self.vcpu_count % 2):
            raise ConfigError(VCPU_COUNT_ERROR)
        if self.mem_size_mib == 0 or (self.huge_pages != "None" and self.mem_size_mib % 2):
            raise ConfigError(MEM_SIZE_ERROR)


class MachineConfigUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /machine-config: every field optional; unset fields keep their value."""

    vcpu_count: U8 | None = None
    mem_size_mib: USIZE | None = None
    smt: bool | None = None
    cpu_template: CpuTemplateName | None = None
    track_dirty_pages: bool | None = None
    huge_pages: HugePages | None = None

    def apply(self, current: MachineConfig) -> MachineConfig:
        """A new, validated MachineConfig; ``current`` is not modified."""
        changes = {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not None}
        updated = msgspec.structs.replace(current, **changes)
        updated.validate()
        return updated
