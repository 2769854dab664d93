"""SandboxWorker: one host's sandbox backend, running up to `concurrency` executions at once.

A plain class; the sandbox pool makes it a threaded Ray actor (so `health()`
answers while executions run) and sends it executions in batches (one Ray call
for several: the call, not the sandbox, was a third of an execution's cost), and
the gRPC SandboxService wraps it directly on hosts outside Ray. `setup()` fails
closed: it raises SandboxUnavailable if the configured isolation does not pass
its self-check.
"""

from __future__ import annotations

import os

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.core.config import SandboxConfig
from runtime.sandbox import Execution, ExecutionResult, SandboxBackend, make_backend
from runtime.sandbox.requests import validate


class SandboxWorker:
    def __init__(self, cfg: SandboxConfig, name: str, index: int = 0):
        self.cfg = cfg
        self.name = name
        self.index = index
        self.backend: SandboxBackend | None = None
        self._slots: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self._running = 0
        self._completed = 0

    def setup(self) -> dict[str, Any]:
        backend = make_backend(self.cfg, slots=self.cfg.concurrency, tag=f"{self.index}")
        backend.check()
        self.backend = backend
        for slot in range(self.cfg.concurrency):
            self._slots.put(slot)
        self._batches = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="slot")
        return {"name": self.name, "backend": backend.name, "isolated": backend.isolated}

    def execute(self, execution: Execution) -> ExecutionResult:
        """Run one execution; blocks while all slots are busy. Raises InvalidExecution, before taking a
        slot, for a request over a bound of the config (callers outside the pool reach workers too)."""
        if self.backend is None:
            raise RuntimeError(f"{self.name}: setup() has not run")
        validate(execution, self.cfg)
        slot = self._slots.get()
        with self._lock:
            self._running += 1
        try:
            result = self.backend.run(execution, slot)
        finally:
            self._slots.put(slot)
            with self._lock:
                self._running -= 1
                self._completed += 1
        result.worker = self.name
        return result

    def execute_batch(self, executions: list[Execution]) -> list[ExecutionResult | str]:
        """Run `executions` on the slots (in order, as slots free); each is answered by its result,
        or by the error that kept it from running, so one bad request does not fail the others."""
        if self.backend is None:
            raise RuntimeError(f"{self.name}: setup() has not run")
        return list(self._batches.map(self._answer, executions))

    def _answer(self, execution: Execution) -> ExecutionResult | str:
        try:
            return self.execute(execution)
        except Exception as exc:  # a bad request or a worker-side bug: this execution's answer, not the batch's
            return f"worker error: {exc!r}"

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.name, "pid": os.getpid(), "ready": self.backend is not None, "running": self._running,
                    "backend": self.backend.name if self.backend else "",
                    "completed": self._completed, "isolated": bool(self.backend and self.backend.isolated)}

    def shutdown(self) -> None:
        if self.backend is not None:
            self._batches.shutdown(wait=False, cancel_futures=True)
            self.backend.close()
