"""Blocking until a long-running command is told to stop."""

from __future__ import annotations

import signal
import threading


def wait_for_stop() -> None:
    """Block until SIGTERM or Ctrl-C (KeyboardInterrupt propagates to the caller's `finally`)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
