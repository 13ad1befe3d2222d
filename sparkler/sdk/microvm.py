"""``MicroVM``: a VMM process (launched or attached) with a typed API client, as a context manager.

    with MicroVM.launch("/tmp/vm.sock") as vm:        # runs `python -m sparkler --api-sock ...`
        vm.configure(kernel="vmlinux", vcpus=2, mem_mib=256, boot_args="console=ttyS0")
        vm.start()
        vm.pause()

Leaving the block closes the connection and, for a launched process, terminates it (SIGTERM,
then SIGKILL after ``stop_timeout``) and removes the socket file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.machine import MachineConfig
from sparkler.sdk.client import Client

DEFAULT_COMMAND = (sys.executable, "-m", "sparkler")


class MicroVM:
    def __init__(
        self,
        socket_path: str,
        command: Sequence[str] | None = None,
        *,
        instance_id: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        popen_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.socket_path = str(socket_path)
        self.command = list(command) if command is not None else None
        self.instance_id = instance_id
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.popen_kwargs = popen_kwargs or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.api = Client(self.socket_path)

    @classmethod
    def launch(cls, socket_path: str, command: Sequence[str] = DEFAULT_COMMAND, **kwargs: Any) -> MicroVM:
        """A MicroVM that starts ``command --api-sock <socket_path> [--id <id>] <extra_args>``."""
        return cls(socket_path, command, **kwargs)

    @classmethod
    def attach(cls, socket_path: str) -> MicroVM:
        """A MicroVM for an already running VMM; leaving the block does not stop it."""
        return cls(socket_path, None)

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> MicroVM:
        if self.command is not None:
            self._spawn()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> None:
        argv = self.command + ["--api-sock", self.socket_path]  # type: ignore[operator]
        if self.instance_id is not None:
            argv += ["--id", self.instance_id]
        argv += self.extra_args
        self.process = subprocess.Popen(argv, **self.popen_kwargs)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{argv[0]} exited with code {self.process.returncode} before serving the API"
                )
            if _can_connect(self.socket_path):
                return
            time.sleep(0.01)
        self.close()
        raise TimeoutError(
            f"the API socket {self.socket_path} did not appear within {self.startup_timeout} s"
        )

    def close(self) -> None:
        self.api.close()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    # --- conveniences -------------------------------------------------------------------------
    def configure(
        self,
        kernel: str,
        *,
        boot_args: str | None = None,
        initrd: str | None = None,
        vcpus: int = 1,
        mem_mib: int = 128,
        smt: bool = False,
    ) -> None:
        """PUT /boot-source and PUT /machine-config in one call."""
        self.api.put_boot_source(
            BootSourceConfig(kernel_image_path=kernel, initrd_path=initrd, boot_args=boot_args)
        )
        self.api.put_machine_config(MachineConfig(vcpu_count=vcpus, mem_size_mib=mem_mib, smt=smt))

    def start(self) -> None:
        self.api.start()

    def pause(self) -> None:
        self.api.pause()

    def resume(self) -> None:
        self.api.resume()

    def send_ctrl_alt_del(self) -> None:
        self.api.send_ctrl_alt_del()

    @property
    def state(self) -> str:
        return self.api.describe_instance().state


def _can_connect(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


__all__ = ["MicroVM", "DEFAULT_COMMAND"]
