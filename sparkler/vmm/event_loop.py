"""The VMM thread's event loop: one selector, fd -> callback(ready mask).

Everything the VMM thread serves goes through it: queue-notify eventfds and rate-limiter timerfds
registered by the builder, the exit pipe, stdin, the API channel, and host fds that devices add and
remove while they run (a tap, vsock's Unix sockets) through :class:`DeviceHost`.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

Callback = Callable[[int], None]


class EventLoop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()

    def add(self, fd: int, callback: Callback, events: int = READ) -> None:
        """Serve ``fd``: ``callback(mask)`` runs on the VMM thread when it is ready for ``events``."""
        self._sel.register(fd, events, callback)

    def modify(self, fd: int, events: int, callback: Callback | None = None) -> None:
        key = self._sel.get_key(fd)
        self._sel.modify(fd, events, callback if callback is not None else key.data)

    def remove(self, fd: int) -> None:
        """Stop serving ``fd`` (unknown fds are ignored, so teardown paths may call it twice)."""
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def __contains__(self, fd: int) -> bool:
        try:
            self._sel.get_key(fd)
        except (KeyError, ValueError):
            return False
        return True

    def run_once(self, timeout: float | None = None) -> int:
        """Wait for ready fds (or ``timeout`` s) and run their callbacks; the number run."""
        events = self._sel.select(timeout)
        for key, mask in events:
            if key.fd in self:  # an earlier callback in this batch may have removed it
                key.data(mask)
        return len(events)

    def close(self) -> None:
        self._sel.close()


class DeviceHost:
    """What a device sees of the event loop: add/modify/remove its own host fds.

    Every callback is followed by ``after`` (the builder re-arms the device's rate-limiter timer),
    so a device never has to know about timerfds.
    """

    def __init__(self, loop: EventLoop, after: Callable[[], None]) -> None:
        self._loop = loop
        self._after = after

    def _wrap(self, callback: Callback) -> Callback:
        def run(mask: int) -> None:
            callback(mask)
            self._after()

        return run

    def rearm(self) -> None:
        """Re-arm the device's timer now, after a change made outside its own callbacks (an API
        request served on the VMM thread, e.g. a new balloon statistics interval)."""
        self._after()

    def add_fd(self, fd: int, callback: Callback, events: int = READ) -> None:
        self._loop.add(fd, self._wrap(callback), events)

    def modify_fd(self, fd: int, events: int, callback: Callback | None = None) -> None:
        self._loop.modify(fd, events, self._wrap(callback) if callback is not None else None)

    def remove_fd(self, fd: int) -> None:
        self._loop.remove(fd)


__all__ = ["READ", "WRITE", "DeviceHost", "EventLoop"]
