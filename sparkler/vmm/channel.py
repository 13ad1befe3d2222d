"""Request/response channel between the API thread and the VMM thread.

Firecracker's shape: the API thread puts one action on the request queue, rings an eventfd
doorbell and blocks on the response queue. The VMM thread's event loop watches ``channel.fd``;
when it is readable it calls :meth:`Channel.process` (via ``Controller.process_channel``), which
drains the doorbell, answers every queued action and puts each reply on the response queue.

Requests are strictly serialised: there is one API thread and it waits for each reply, so the
n-th reply always belongs to the n-th request.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any


class Channel:
    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Counter-mode eventfd: every write adds 1; one read returns and clears the sum.
        self._doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._call_lock = threading.Lock()
        self._closed = False

    @property
    def fd(self) -> int:
        """Readable while actions are waiting for the VMM thread."""
        return self._doorbell

    # --- API thread ---------------------------------------------------------------------------
    def call(self, action: Any, timeout: float | None = None) -> Any:
        """Send ``action`` to the VMM thread and wait for its reply (VmmData | VmmActionError)."""
        with self._call_lock:
            self._requests.put(action)
            os.eventfd_write(self._doorbell, 1)
            return self._responses.get(timeout=timeout)

    # --- VMM thread ---------------------------------------------------------------------------
    def process(self, handler: Callable[[Any], Any]) -> int:
        """Answer every waiting action with ``handler``; returns how many were answered."""
        try:
            os.eventfd_read(self._doorbell)
        except BlockingIOError:
            pass
        answered = 0
        while True:
            try:
                action = self._requests.get_nowait()
            except queue.Empty:
                return answered
            self._responses.put(handler(action))
            answered += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._doorbell)


__all__ = ["Channel"]
