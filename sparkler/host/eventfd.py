"""eventfd wrappers: a counter fd the kernel (irqfd, ioeventfd) and our threads signal through."""

from __future__ import annotations

import os


class EventFd:
    """``os.eventfd`` with EFD_CLOEXEC, plus EFD_NONBLOCK unless ``nonblocking=False``.

    Usable with select/epoll (``fileno``) and as a context manager; ``close`` is idempotent.
    """

    def __init__(self, initval: int = 0, nonblocking: bool = True) -> None:
        flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblocking else 0)
        self.fd = os.eventfd(initval, flags)

    def write(self, value: int = 1) -> None:
        os.eventfd_write(self.fd, value)

    def read(self) -> int:
        """The counter (and reset it), or 0 when nothing was signalled."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> EventFd:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EventFdTrigger(EventFd):
    """An interrupt line: registered with KVM_IRQFD, each trigger() is an edge on its GSI."""

    def trigger(self) -> None:
        self.write(1)
