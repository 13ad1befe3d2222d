"""PUT/PATCH /balloon, PATCH /balloon/statistics bodies and the config file's ``balloon`` section.

Firecracker's ``Balloon`` (catalog 1.3, 5.5): ``amount_mib`` is the target the guest should give
back (4 KiB pages = ``amount_mib * 256``) and may not exceed the machine's memory;
``deflate_on_oom`` offers VIRTIO_BALLOON_F_DEFLATE_ON_OOM; ``stats_polling_interval_s > 0`` turns
the statistics queue on (and can not be switched on or off after boot); ``free_page_reporting``
adds the reporting queue. ``free_page_hinting`` (developer preview in Firecracker) is refused.

After boot only ``amount_mib`` (``BalloonUpdate``) and the polling interval
(``BalloonStatsUpdate``) can change.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from sparkler.errors import ConfigError

U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]

PAGES_PER_MIB = 256  # 4 KiB balloon pages (VIRTIO_BALLOON_PFN_SHIFT = 12)

TOO_LARGE = "Amount of pages requested is too large."
NO_DEVICE = "No balloon device found."
STATS_DISABLED = "Statistics for the balloon device are not enabled."
STATS_TOGGLE = "Cannot enable or disable statistics polling after boot; set stats_polling_interval_s before boot."
HINTING_NOT_SUPPORTED = "Free page hinting is not supported by this version of Sparkler yet."
MEM_SMALLER_THAN_BALLOON = "The memory size (MiB) is smaller than the previously set balloon device target size."


class BalloonConfig(msgspec.Struct, forbid_unknown_fields=True):
    amount_mib: U32
    deflate_on_oom: bool
    stats_polling_interval_s: U16 = 0
    free_page_hinting: bool = False
    free_page_reporting: bool = False

    def validate(self, mem_size_mib: int | None = None) -> None:
        if self.free_page_hinting:
            raise ConfigError(HINTING_NOT_SUPPORTED)
        if mem_size_mib is not None and self.amount_mib > mem_size_mib:
            raise ConfigError(TOO_LARGE)

    @property
    def target_pages(self) -> int:
        return self.amount_mib * PAGES_PER_MIB

    @property
    def stats_enabled(self) -> bool:
        return self.stats_polling_interval_s > 0


class BalloonUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /balloon: the new target, nothing else."""

    amount_mib: U32


class BalloonStatsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /balloon/statistics: the new polling interval (non-zero iff it was non-zero)."""

    stats_polling_interval_s: U16


def check_stats_update(current_interval_s: int, new_interval_s: int) -> None:
    """Firecracker's rule: statistics can not be switched on or off after boot."""
    if (current_interval_s == 0) != (new_interval_s == 0):
        raise ConfigError(STATS_TOGGLE)


__all__ = [
    "BalloonConfig",
    "BalloonStatsUpdate",
    "BalloonUpdate",
    "HINTING_NOT_SUPPORTED",
    "MEM_SMALLER_THAN_BALLOON",
    "NO_DEVICE",
    "PAGES_PER_MIB",
    "STATS_DISABLED",
    "STATS_TOGGLE",
    "TOO_LARGE",
    "check_stats_update",
]
