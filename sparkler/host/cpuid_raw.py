"""Raw host CPUID, executed natively by a tiny machine-code stub in an executable mmap.

Python has no CPUID instruction; KVM_GET_SUPPORTED_CPUID tells what KVM *offers*, not what the CPU
has. On kvm-pvm hosts guests execute CPUID natively and see the host's feature bits, so the VMM
needs the raw values to compute what to hide (see arch/x86_64/cpuid.pvm_cmdline_additions).

The stub follows the System V AMD64 ABI: ``void stub(u32 leaf, u32 subleaf, u32 out[4])``.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from functools import lru_cache

# push rbx; mov r8, rdx; mov eax, edi; mov ecx, esi; cpuid;
# mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_STUB = bytes.fromhex("53" "4989d0" "89f8" "89f1" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")

_Fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))


class _Stub:
    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._map.write(_STUB)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self.fn = _Fn(address)


@lru_cache(maxsize=1)
def _stub() -> _Stub:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise OSError("raw CPUID is only available on x86_64")
    return _Stub()


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of the host CPU's CPUID ``leaf``/``subleaf``."""
    out = (ctypes.c_uint32 * 4)()
    _stub().fn(leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]
