"""Ctrl-C (SIGINT) and SIGTERM during training: finish the batch, save, then stop.

SIGTERM is what ``kill``, ``timeout`` and job schedulers send; it is treated like Ctrl-C so
that a stopped run can always be resumed. A second signal of either kind acts at once with
the handler that was there before (Ctrl-C: KeyboardInterrupt; SIGTERM: the process ends).
"""
import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_requests():
    """Yields ``requested()``: None, or the number of the first signal received since entry.

    Outside the main thread (where Python delivers no signals) it never asks to stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received = []
    # None: a handler not set from Python, which cannot be put back; the default then
    previous = {s: signal.getsignal(s) or signal.SIG_DFL for s in SIGNALS}

    def handler(signum, frame):
        received.append(signum)
        for s in SIGNALS:
            signal.signal(s, previous[s])

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for s in SIGNALS:
            signal.signal(s, previous[s])
