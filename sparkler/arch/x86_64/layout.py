"""The x86_64 guest-physical address map, IRQs and ports: the only address map in Sparkler.

Values follow Firecracker's machine model (catalog section 4.1/4.3/4.4) so guests built for
Firecracker find everything where they expect it.
"""

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# --- low memory boot structures -------------------------------------------------------------
BOOT_GDT_START = 0x500
BOOT_GDT_MAX_ENTRIES = 4
BOOT_IDT_START = 0x520
PVH_INFO_START = 0x6000
ZERO_PAGE_START = 0x7000
BOOT_STACK_POINTER = 0x8FF0
PML4_START = 0x9000
PDPTE_START = 0xA000
PDE_START = 0xB000
CMDLINE_START = 0x20000
CMDLINE_MAX_SIZE = 2048  # bytes, including the terminating NUL

# --- e820 / reserved areas --------------------------------------------------------------------
EBDA_START = 0x9FC00
SYSTEM_MEM_START = 0x9FC00  # MP table (and later ACPI tables) live here
SYSTEM_MEM_SIZE = 0xE0000 - 0x9FC00
RSDP_ADDR = 0xE0000
HIMEM_START = 0x100000  # 1 MiB: kernels load at or above this

# --- MMIO ---------------------------------------------------------------------------------------
MMIO32_START = 0xC000_0000  # 32-bit MMIO gap: [3 GiB, 4 GiB) holds no RAM
MMIO32_SIZE = 1 * GIB
BOOT_TIMER_ADDR = 0xC000_0000  # --boot-timer device, 4 KiB, no IRQ
BOOT_TIMER_SIZE = 0x1000
BOOT_TIMER_MAGIC = 123  # a one-byte write of this value marks "guest booted"
VIRTIO_MMIO_START = 0xC000_1000  # first virtio-mmio device; 4 KiB each, first-fit
VIRTIO_MMIO_SIZE = 0x1000
PCI_MMCONFIG_START = 0xEEC0_0000  # reserved in e820
PCI_MMCONFIG_SIZE = 256 * MIB
IOAPIC_ADDR = 0xFEC0_0000
APIC_ADDR = 0xFEE0_0000
KVM_TSS_ADDR = 0xFFFB_D000  # KVM_SET_TSS_ADDR: three pages
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000

# RAM above the 32-bit gap continues at 4 GiB, up to the 64-bit MMIO gap at 256 GiB.
RAM_64BIT_START = 4 * GIB
MMIO64_START = 256 * GIB
MMIO64_SIZE = 256 * GIB
RAM_PAST_MMIO64_START = 512 * GIB

# --- interrupts -------------------------------------------------------------------------------
IRQ_I8042 = 1
IRQ_SERIAL_COM1 = 4
IRQ_BASE = 5  # first GSI handed to virtio-mmio devices
IRQ_MAX = 23  # last legacy GSI (IOAPIC has 24 pins)
IOAPIC_PINS = 24

# --- legacy ports -----------------------------------------------------------------------------
PORT_COM1 = 0x3F8
PORT_COM1_SIZE = 8
PORT_I8042 = 0x60
PORT_I8042_SIZE = 5  # 0x60 data .. 0x64 status/command

# --- limits -------------------------------------------------------------------------------------
MAX_VCPUS = 32
DEFAULT_MEM_SIZE_MIB = 128
DEFAULT_VCPU_COUNT = 1
DEFAULT_KERNEL_CMDLINE = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"


def ram_regions(mem_size: int) -> list[tuple[int, int]]:
    """(guest address, size) of each RAM region for a guest of ``mem_size`` bytes.

    Region 1 is [0, min(size, 3 GiB)); the rest continues at 4 GiB up to the 64-bit MMIO gap at
    256 GiB and then at 512 GiB.
    """
    regions: list[tuple[int, int]] = []
    first = min(mem_size, MMIO32_START)
    regions.append((0, first))
    rest = mem_size - first
    if rest > 0:
        second = min(rest, MMIO64_START - RAM_64BIT_START)
        regions.append((RAM_64BIT_START, second))
        rest -= second
    if rest > 0:
        regions.append((RAM_PAST_MMIO64_START, rest))
    return regions
