"""eventfd wrappers."""

from __future__ import annotations

import os
import select

import pytest

from sparkler.host.eventfd import EventFd, EventFdTrigger


def test_eventfd_read_unsignalled_returns_zero() -> None:
    with EventFd() as efd:
        assert efd.read() == 0


def test_eventfd_writes_accumulate_and_read_resets() -> None:
    with EventFd() as efd:
        efd.write()
        efd.write(4)
        assert efd.read() == 5
        assert efd.read() == 0


def test_eventfd_flags_cloexec_and_nonblocking() -> None:
    with EventFd() as efd:
        assert not os.get_inheritable(efd.fd)
        assert not os.get_blocking(efd.fd)
    with EventFd(nonblocking=False) as efd:
        assert os.get_blocking(efd.fd)


def test_eventfd_signalled_becomes_readable_for_select() -> None:
    with EventFd() as efd:
        assert select.select([efd], [], [], 0)[0] == []
        efd.write()
        assert select.select([efd], [], [], 0)[0] == [efd]


def test_eventfd_close_twice_harmless_then_write_fails() -> None:
    efd = EventFd()
    efd.close()
    efd.close()
    assert efd.fd == -1
    with pytest.raises((OSError, ValueError)):
        efd.write()


def test_eventfd_trigger_trigger_writes_one() -> None:
    with EventFdTrigger() as t:
        t.trigger()
        t.trigger()
        assert t.read() == 2
