"""EventLoop / DeviceHost: callbacks get the ready mask, removal inside a batch is honoured, and a
device's callbacks are followed by the builder's re-arm hook."""

from __future__ import annotations

import os
import socket

from sparkler.vmm.event_loop import READ, WRITE, DeviceHost, EventLoop


def test_callback_gets_mask_and_modify_switches_interest():
    loop = EventLoop()
    a, b = socket.socketpair()
    seen: list[int] = []
    try:
        loop.add(a.fileno(), seen.append, WRITE)
        assert loop.run_once(0) == 1 and seen == [WRITE]
        loop.modify(a.fileno(), READ)
        assert loop.run_once(0) == 0  # nothing to read yet
        b.send(b"x")
        loop.run_once(0)
        assert seen == [WRITE, READ]
    finally:
        loop.close()
        a.close()
        b.close()


def test_fd_removed_by_an_earlier_callback_is_not_dispatched():
    loop = EventLoop()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    calls: list[int] = []
    try:
        def first(_mask: int) -> None:
            calls.append(1)
            loop.remove(r1)
            loop.remove(r2)

        def second(_mask: int) -> None:
            calls.append(2)
            loop.remove(r1)
            loop.remove(r2)

        loop.add(r1, first)
        loop.add(r2, second)
        os.write(w1, b"x")
        os.write(w2, b"x")
        loop.run_once(0)
        assert len(calls) == 1
        assert r1 not in loop and r2 not in loop
        loop.remove(r1)  # twice is harmless
    finally:
        loop.close()
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_device_host_runs_after_hook_after_each_callback():
    loop = EventLoop()
    r, w = os.pipe()
    order: list[str] = []
    try:
        host = DeviceHost(loop, lambda: order.append("rearm"))
        host.add_fd(r, lambda _m: order.append("device"))
        os.write(w, b"x")
        loop.run_once(0)
        assert order == ["device", "rearm"]
        host.modify_fd(r, READ, lambda _m: order.append("device2"))
        loop.run_once(0)
        assert order[-2:] == ["device2", "rearm"]
        host.remove_fd(r)
        assert loop.run_once(0) == 0
    finally:
        loop.close()
        os.close(r)
        os.close(w)
