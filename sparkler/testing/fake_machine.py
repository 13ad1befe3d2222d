"""A fake builder and Machine for testing the API and the controller without KVM.

``FakeBuilder`` is a drop-in ``builder_fn`` (``(config, options) -> Machine``): it records every
configuration it was asked to build and returns a ``FakeMachine`` that implements the Machine
interface (start/pause/resume/state/send_ctrl_alt_del/exit_fd/exit_code/stop) and records calls.
Set ``fail_with`` to make the next builds raise, or ``FakeMachine.fail_on`` to make a method raise.
"""

from __future__ import annotations

import os
import threading
from typing import Any


class FakeMachine:
    def __init__(self, config: Any = None, options: Any = None) -> None:
        self.config = config
        self.options = options
        self.state = "Not started"
        self.exit_code: int | None = None
        self.calls: list[str] = []
        self.fail_on: dict[str, BaseException] = {}
        self.stopped = False
        self._lock = threading.Lock()
        self._exit_r, self._exit_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    @property
    def exit_fd(self) -> int:
        return self._exit_r

    def _record(self, name: str) -> None:
        self.calls.append(name)
        error = self.fail_on.get(name)
        if error is not None:
            raise error

    def start(self) -> None:
        self._record("start")
        self.state = "Running"

    def pause(self) -> None:
        self._record("pause")
        self.state = "Paused"

    def resume(self) -> None:
        self._record("resume")
        self.state = "Running"

    def send_ctrl_alt_del(self) -> None:
        self._record("send_ctrl_alt_del")

    def request_exit(self, code: int, reason: str = "") -> None:
        with self._lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
        os.write(self._exit_w, b"x")

    def stop(self) -> None:
        if self.stopped:
            return
        self.calls.append("stop")
        self.stopped = True
        os.close(self._exit_r)
        os.close(self._exit_w)


class FakeBuilder:
    """Callable builder: ``FakeBuilder()(config, options) -> FakeMachine``."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.fail_with = fail_with
        self.builds: list[tuple[Any, Any]] = []
        self.machines: list[FakeMachine] = []

    def __call__(self, config: Any, options: Any) -> FakeMachine:
        self.builds.append((config, options))
        if self.fail_with is not None:
            raise self.fail_with
        machine = FakeMachine(config, options)
        self.machines.append(machine)
        return machine

    @property
    def machine(self) -> FakeMachine | None:
        return self.machines[-1] if self.machines else None


class FakeVmm:
    """A complete API process in-process: ApiServer (fc_api thread) + channel + Controller on a
    VMM thread, building FakeMachines. For SDK and API tests that need a live socket.

    ``with FakeVmm(path) as vmm: ...``; ``vmm.builder`` and ``vmm.controller`` are inspectable.
    """

    def __init__(
        self, socket_path: str, *, instance_id: str = "anonymous-instance", max_payload: int = 51200
    ):
        from sparkler.api.server import ApiServer
        from sparkler.vmm.channel import Channel
        from sparkler.vmm.controller import Controller

        self.socket_path = str(socket_path)
        self.channel = Channel()
        self.builder = FakeBuilder()
        self.controller = Controller(self.builder, instance_id=instance_id, channel=self.channel)
        self.server = ApiServer(self.socket_path, self.channel.call, max_payload=max_payload)
        self._stop = threading.Event()
        self._vmm_thread = threading.Thread(target=self._vmm_loop, name="fake_vmm", daemon=True)

    def _vmm_loop(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.channel.fd, selectors.EVENT_READ)
        while not self._stop.is_set():
            if sel.select(0.05):
                self.controller.process_channel()
        sel.close()

    def start(self) -> FakeVmm:
        self.server.start()
        self._vmm_thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self._stop.set()
        self._vmm_thread.join(2)
        self.channel.close()

    def __enter__(self) -> FakeVmm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m sparkler.testing.fake_machine --api-sock PATH [--id ID]``: serve until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--id", default="anonymous-instance")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FakeVmm(args.api_sock, instance_id=args.id):
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


__all__ = ["FakeBuilder", "FakeMachine", "FakeVmm", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
