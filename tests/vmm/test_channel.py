"""vmm.channel.Channel: request queue + eventfd doorbell + response queue."""

import selectors
import threading

from sparkler.vmm.channel import Channel


def _serve(channel, handler, stop):
    sel = selectors.DefaultSelector()
    sel.register(channel.fd, selectors.EVENT_READ)
    while not stop.is_set():
        if sel.select(0.05):
            channel.process(handler)
    sel.close()


def test_channel_doorbell_readable_after_call_starts():
    channel = Channel()
    sel = selectors.DefaultSelector()
    sel.register(channel.fd, selectors.EVENT_READ)
    assert sel.select(0) == []
    thread = threading.Thread(target=channel.call, args=("ping",))
    thread.start()
    assert sel.select(2)
    assert channel.process(lambda a: a.upper()) == 1
    thread.join(2)
    assert sel.select(0) == []  # doorbell drained
    channel.close()


def test_channel_call_returns_handler_reply_from_other_thread():
    channel, stop = Channel(), threading.Event()
    seen_threads = []

    def handler(action):
        seen_threads.append(threading.current_thread().name)
        return ("reply", action)

    vmm = threading.Thread(target=_serve, args=(channel, handler, stop), name="vmm")
    vmm.start()
    try:
        replies = [channel.call(i, timeout=2) for i in range(100)]
    finally:
        stop.set()
        vmm.join(2)
        channel.close()
    assert replies == [("reply", i) for i in range(100)]
    assert set(seen_threads) == {"vmm"}


def test_channel_process_without_requests_answers_nothing():
    channel = Channel()
    assert channel.process(lambda a: a) == 0
    channel.close()


def test_channel_concurrent_callers_get_their_own_replies():
    channel, stop = Channel(), threading.Event()
    vmm = threading.Thread(target=_serve, args=(channel, lambda a: a * 2, stop))
    vmm.start()
    results = {}

    def caller(n):
        results[n] = [channel.call(n * 1000 + i, timeout=2) for i in range(20)]

    callers = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(5)
    stop.set()
    vmm.join(2)
    channel.close()
    for n in range(4):
        assert results[n] == [(n * 1000 + i) * 2 for i in range(20)]
