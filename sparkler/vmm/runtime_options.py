"""What the command line decided: RunOptions (one field per Firecracker flag) and the exit codes.

``cli.py`` fills a RunOptions from ``argv``; ``vmm.runtime`` (which re-exports it) consumes it. This
module is deliberately tiny and stdlib-only so that parsing the command line costs nothing.

Exit codes are Firecracker's ``FcExitCode`` values; every place that ends the process uses these.
"""

from __future__ import annotations

import enum

import msgspec

DEFAULT_API_SOCK = "/run/firecracker.socket"
DEFAULT_INSTANCE_ID = "anonymous-instance"
DEFAULT_LEVEL = "Info"
DEFAULT_HTTP_API_MAX_PAYLOAD_SIZE = 51200


class FcExitCode(enum.IntEnum):
    """Firecracker's process exit codes (``FcExitCode`` in src/vmm/src/lib.rs)."""

    OK = 0
    GENERIC = 1
    UNEXPECTED = 2
    BAD_SYSCALL = 148
    SIGBUS = 149
    SIGSEGV = 150
    SIGXFSZ = 151
    BAD_CONFIGURATION = 152
    ARG_PARSING = 153
    SIGXCPU = 154
    SIGPIPE = 155
    SIGHUP = 156
    SIGILL = 157


class RunOptions(msgspec.Struct):
    """The parsed command line. Defaults are Firecracker's.

    ``mmds_size_limit`` left as None resolves to ``http_api_max_payload_size`` (Firecracker's rule).
    ``metadata_json`` is the text of the ``--metadata`` file, read and checked to be JSON by the CLI
    (None when the flag is absent). ``extra_args`` are the tokens after a bare ``--`` (unused by the
    VMM; kept for completeness, the jailer forwards them).
    """

    api_sock: str = DEFAULT_API_SOCK
    no_api: bool = False
    config_file: str | None = None
    boot_timer: bool = False
    instance_id: str = DEFAULT_INSTANCE_ID
    log_path: str | None = None
    level: str = DEFAULT_LEVEL
    show_level: bool = False
    show_log_origin: bool = False
    module: str | None = None
    metrics_path: str | None = None
    http_api_max_payload_size: int = DEFAULT_HTTP_API_MAX_PAYLOAD_SIZE
    mmds_size_limit: int | None = None
    no_seccomp: bool = False
    seccomp_filter: str | None = None
    start_time_us: int | None = None
    start_time_cpu_us: int | None = None
    parent_cpu_time_us: int | None = None
    metadata: str | None = None
    enable_pci: bool = False
    describe_snapshot: str | None = None
    snapshot_version: bool = False
    extra_args: tuple[str, ...] = ()
    metadata_json: str | None = None
    pvm_compat: str = "auto"  # Sparkler extension: on | off | auto (arch/x86_64/pvm_compat.py)

    def __post_init__(self) -> None:
        if self.mmds_size_limit is None:
            self.mmds_size_limit = self.http_api_max_payload_size


__all__ = ["FcExitCode", "RunOptions"]


class BuildOptions(msgspec.Struct, frozen=True):
    """How the builder wires host resources; lives here (not in vmm/builder.py) so that the API
    runtime can hold one before InstanceStart without importing the builder, KVM and the devices."""

    boot_timer: bool = False
    serial_out: int | None = None  # fd for guest console output; None = stdout
    serial_in: int | None = None  # fd to read guest console input from; None = none
    instance_id: str = DEFAULT_INSTANCE_ID
    # Reference points for the boot-timer line (CLOCK_MONOTONIC / process CPU, in microseconds).
    start_wall_us: int | None = None
    start_cpu_us: int | None = None
    # The VM's sparkler.mmds.imds.Mmds (data store + MMDS config + tokens), shared by the MMDS
    # network stacks of the interfaces listed in mmds-config; None when nothing made one.
    mmds: object | None = None
    # PVM compatibility mode (arch/x86_64/pvm_compat.py): on | off | auto. The command line's
    # default is auto; a BuildOptions made in code stays off unless asked, so library callers
    # and builder tests see Firecracker's machine unchanged.
    pvm_compat: str = "off"
