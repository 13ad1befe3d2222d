"""SendCtrlAltDel end to end: the probe guest reads Firecracker's scancodes from the i8042 and sees
IRQ 1 latched in the (masked) 8259 exactly when it enabled keyboard interrupts."""

from __future__ import annotations

import time

import pytest

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"


@pytest.mark.parametrize("mode, irq1", [("irq", "1"), ("noirq", "0")])
def test_send_ctrl_alt_del_reaches_the_guest(kvm, probe_kernel, tmp_path, mode, irq1):
    from sparkler.sdk import MicroVM
    from tests.e2e.test_api_boot import Vmm

    vmm = Vmm(tmp_path)
    try:
        with MicroVM(vmm.sock) as vm:
            vmm.start()
            vm.configure(str(probe_kernel), boot_args=f"{BASE_ARGS} probe.kbd={mode}", vcpus=1, mem_mib=128)
            vm.start()
            deadline = time.monotonic() + 30
            while "INFO kbd_waiting" not in vmm.stdout:
                assert time.monotonic() < deadline and vmm.proc.poll() is None, vmm.describe()
                time.sleep(0.02)
            vm.send_ctrl_alt_del()
            assert vmm.wait() == 0, vmm.describe()
        from tests.e2e.test_balloon import _console

        out = _console(vmm)
        assert f"PASS kbd_ctrl_alt_del codes=14,11,e0,71 irq1={irq1}" in out, vmm.describe()
        assert "FAIL" not in out, vmm.describe()
    finally:
        vmm.stop()
