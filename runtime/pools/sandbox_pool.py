"""SandboxPool: SandboxWorker actors behind a bounded queue; every execution gets exactly one result.

- `submit()` blocks when `queue_limit` executions are waiting (backpressure).
- One dispatcher thread owns the workers: it sends each worker executions in
  batches of up to `concurrency` (one Ray call each), at most two batches at a
  time (the second waits in the worker for slots, so none idles while a batch's
  last execution runs), collects results, and probes health every
  `health_interval_s`. A worker that dies, does not answer a probe within
  `health_timeout_s`, or holds an execution past twice its timeout (the wait
  behind the batch before it, then its run) plus that margin is killed and
  replaced under the same name; its executions are re-sent to other workers.
  After `max_attempts` workers an execution is answered with a `sandbox_error`
  result rather than lost.
- `resize(n)` adds workers, or drains and retires the newest ones.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.sandbox_worker import SandboxWorker
from runtime.core.cluster import actor_name
from runtime.core.config import FactoryConfig
from runtime.core.calls import await_setup
from runtime.core.errors import FactoryError
from runtime.pools.inference_pool import SERVER_LOST
from runtime.core.metrics import SandboxMetrics
from runtime.sandbox import Execution, ExecutionResult, Status
from runtime.sandbox.requests import validate
from runtime.supervision.supervisor import Supervisor, standalone

log = logging.getLogger(__name__)
STUCK_GRACE_S = 5.0
BATCHES_PER_WORKER = 2
"""Batches a worker holds at once: the second keeps its slots busy while the first's last execution runs."""


class PoolStopped(FactoryError):
    """A result was awaited from a pool whose dispatcher has stopped (shut down or crashed)."""


class SandboxBusy(FactoryError):
    """The pool's queue stayed full for the whole submit timeout."""


@dataclass
class Job:
    execution: Execution
    future: Future = field(default_factory=Future)
    attempts: int = 0
    submitted: float = field(default_factory=time.monotonic)
    sent: float = 0.0


@dataclass
class Worker:
    index: int
    name: str
    handle: Any = None
    state: str = "starting"
    """starting, ready, draining, respawn (name not yet free), failed."""
    setup_ref: Any = None
    inflight: dict = field(default_factory=dict)
    """The batches sent and not yet answered: call's ObjectRef -> its jobs."""
    probe: tuple[Any, float] | None = None
    last_probe: float = field(default_factory=time.monotonic)
    replacing_since: float | None = None

    def held(self) -> list[Job]:
        """Every execution this worker holds, across its batches."""
        return [job for batch in self.inflight.values() for job in batch]


class SandboxPool:
    def __init__(self, cfg: FactoryConfig, supervisor: Supervisor | None = None):
        """The pool respawns lost workers itself, without blocking its dispatcher, but asks the
        `supervisor`'s policy first and records each loss and replacement in its event log."""
        self.cfg = cfg
        self.supervisor = supervisor or standalone(cfg)
        self.sandbox = cfg.sandbox
        self.workers: list[Worker] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.metrics = SandboxMetrics(cfg.experiment.name)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=self.sandbox.queue_limit)
        self._retry: collections.deque[Job] = collections.deque()
        self._target = cfg.placement.sandbox.replicas
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-dispatcher", daemon=True)

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> SandboxPool:
        """Start the workers, wait for their isolation self-checks, then start dispatching."""
        for _ in range(self._target):
            self._add_worker()
        await_setup({w.name: w.setup_ref for w in self.workers}, self.sandbox.setup_timeout_s, "sandbox.setup_timeout_s")
        for worker in self.workers:
            worker.state, worker.setup_ref = "ready", None
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop dispatching; each worker closes its sandboxes (cgroups, mounts) before it is killed."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.cfg.cluster.shutdown_timeout_s)
        closing = [w.handle.shutdown.remote() for w in self.workers if w.handle is not None and w.state != "retired"]
        if closing:  # a worker that does not answer in time is killed all the same
            ray.wait(closing, num_returns=len(closing), timeout=self.cfg.cluster.shutdown_timeout_s)
        for worker in self.workers:
            if worker.handle is not None:
                ray.kill(worker.handle)

    def resize(self, replicas: int) -> None:
        """Grow now; shrink by draining the newest workers (they finish what they hold)."""
        self._target = replicas

    # ---- executions ------------------------------------------------------

    def submit(self, execution: Execution, block_s: float | None = None) -> Future:
        """Queue one execution; its future resolves to exactly one ExecutionResult.

        Raises InvalidExecution (nothing queued) when the request is over a bound of `sandbox`."""
        job = Job(validate(execution, self.sandbox))
        try:
            self._queue.put(job, timeout=block_s)
        except queue.Full:
            raise SandboxBusy(f"sandbox queue full ({self.sandbox.queue_limit}) for {block_s}s") from None
        self.metrics.queued(self._queue.qsize() + len(self._retry))
        return job.future

    def execute(self, execution: Execution) -> ExecutionResult:
        return self._result(self.submit(execution))

    def health(self) -> dict[str, Any]:
        ready = [w for w in self.workers if w.state == "ready"]
        return {"ready": bool(ready), "backend": self.sandbox.backend, "isolated": self.sandbox.backend == "bubblewrap",
                "running": sum(len(w.held()) for w in self.workers), "completed": sum(self.counts[s.value] for s in Status)}

    def run(self, executions: list[Execution]) -> list[ExecutionResult]:
        futures = [self.submit(e) for e in executions]
        return [self._result(f) for f in futures]

    def _result(self, future: Future) -> ExecutionResult:
        """The execution's result. Every execution is bounded by the dispatcher (its timeout, the
        stuck-worker margin, max_attempts), so this waits as long as the dispatcher lives."""
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if not self._thread.is_alive():
                    raise PoolStopped("the sandbox pool's dispatcher is not running; no result will come") from None

    def stats(self) -> dict[str, Any]:
        return {"workers": {w.name: w.state for w in self.workers}, "queued": self._queue.qsize() + len(self._retry),
                "inflight": sum(len(w.held()) for w in self.workers), **self.counts}

    # ---- the dispatcher --------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._apply_size()
            self._poll_setups()
            self._dispatch()
            self._collect()
            self._probe_health()

    def _dispatch(self) -> None:
        slots = self.sandbox.concurrency
        for worker in self.workers:
            while worker.state == "ready" and len(worker.inflight) < BATCHES_PER_WORKER:
                batch = self._next_jobs(slots)
                if not batch:
                    return
                for job in batch:
                    job.attempts += 1
                    job.sent = time.monotonic()
                worker.inflight[worker.handle.execute_batch.remote([job.execution for job in batch])] = batch

    def _next_jobs(self, most: int) -> list[Job]:
        jobs = []
        while len(jobs) < most and self._retry:
            jobs.append(self._retry.popleft())
        while len(jobs) < most:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _collect(self) -> None:
        refs = [ref for w in self.workers for ref in w.inflight]
        if not refs:
            time.sleep(0.005)
            return
        if not ray.wait(refs, num_returns=1, timeout=0.01)[0]:
            self._expire_stuck()
            return
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        owners = {ref: w for w in self.workers for ref in w.inflight}
        for ref in done:
            worker = owners[ref]
            if ref in worker.inflight:
                self._finish(worker, ref, worker.inflight.pop(ref))
        self._expire_stuck()

    def _finish(self, worker: Worker, ref, batch: list[Job]) -> None:
        try:
            answers = ray.get(ref, timeout=self.sandbox.health_timeout_s)
        except SERVER_LOST:
            self._retry.extendleft(reversed(batch))
            self._lost(worker, "died")
            return
        except Exception as exc:  # a worker-side bug: answer these executions, keep the worker
            answers = [f"worker error: {exc!r}"] * len(batch)
        if len(answers) != len(batch):  # a worker-side bug too: no execution may go unanswered
            answers = [f"worker error: {len(answers)} answers to {len(batch)} executions"] * len(batch)
        for job, answer in zip(batch, answers):
            self._resolve(job, answer if isinstance(answer, ExecutionResult) else self._error_result(job, answer))

    def _resolve(self, job: Job, result: ExecutionResult) -> None:
        self.counts[result.status.value] += 1
        self.metrics.finished(result.status.value, time.monotonic() - job.submitted)
        job.future.set_result(result)

    def _error_result(self, job: Job, message: str) -> ExecutionResult:
        return ExecutionResult(job.execution.id, Status.SANDBOX_ERROR, None, "", message, 0.0)

    def _expire_stuck(self) -> None:
        """A worker holding an execution past twice its timeout (a wait for a slot behind the batch
        before it, then its own run) plus a margin (start-up) is hung."""
        now = time.monotonic()
        margin = self.sandbox.health_timeout_s + STUCK_GRACE_S
        for worker in self.workers:
            overdue = any(now - j.sent > 2 * (j.execution.timeout_s or self.sandbox.timeout_s) + margin
                          for j in worker.held())
            if overdue and worker.state in ("ready", "draining"):
                self._lost(worker, "held an execution past its timeout")

    def _probe_health(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.state not in ("ready", "draining"):
                continue
            if worker.probe is None and now - worker.last_probe >= self.sandbox.health_interval_s:
                worker.probe, worker.last_probe = (worker.handle.health.remote(), now), now
            elif worker.probe is not None:
                ref, sent = worker.probe
                ready, _ = ray.wait([ref], timeout=0)
                if ready:
                    worker.probe = None
                    try:
                        ray.get(ref, timeout=0)
                    except SERVER_LOST:
                        self._lost(worker, "died")
                elif now - sent > self.sandbox.health_timeout_s:
                    self._lost(worker, "did not answer a health probe")

    # ---- workers ---------------------------------------------------------

    def _lost(self, worker: Worker, why: str) -> None:
        self.supervisor.events.record("lost", "sandbox", f"{worker.name} {why}; its executions are re-sent",
                                      actor=worker.name, inflight=len(worker.held()))
        ray.kill(worker.handle)
        held = worker.held()
        for job in held:
            if job.attempts >= self.sandbox.max_attempts:
                self._resolve(job, self._error_result(job, f"lost on {job.attempts} workers (sandbox.max_attempts)"))
            else:
                self._retry.append(job)
        self.counts["retried"] += len(held)
        worker.inflight.clear()
        worker.probe = None
        if worker.state == "draining":
            worker.state = "retired"
            return
        decision = self.supervisor.policy.decide("sandbox", worker.name, why)
        if decision.action == "fail":
            self.supervisor.events.record("failed", "sandbox", decision.reason, actor=worker.name)
            worker.state = "failed"
        else:
            self.counts["replaced"] += 1
            self.metrics.replaced()
            worker.replacing_since = time.monotonic()
            self._respawn(worker)

    def _respawn(self, worker: Worker) -> None:
        actor = ray.remote(SandboxWorker).options(
            name=worker.name, num_cpus=self.cfg.placement.sandbox.num_cpus, max_concurrency=self.sandbox.concurrency + 2,
            resources=dict(self.cfg.placement.sandbox.resources),
        )
        try:
            worker.handle = actor.remote(self.sandbox, worker.name, worker.index)
        except ValueError:
            worker.state = "respawn"
            return
        worker.state, worker.setup_ref = "starting", worker.handle.setup.remote()

    def _replaced(self, worker: Worker) -> None:
        if worker.replacing_since is not None:
            seconds, worker.replacing_since = time.monotonic() - worker.replacing_since, None
            self.supervisor.events.record("replaced", "sandbox", f"{worker.name} replaced in {seconds:.1f} s",
                                          seconds=seconds, actor=worker.name)

    def _add_worker(self) -> None:
        index = len(self.workers)
        worker = Worker(index, actor_name(self.cfg.experiment.name, "sandbox", index))
        self.workers.append(worker)
        self._respawn(worker)

    def _poll_setups(self) -> None:
        for worker in self.workers:
            if worker.state == "respawn":
                self._respawn(worker)
            elif worker.state == "starting" and ray.wait([worker.setup_ref], timeout=0)[0]:
                try:
                    ray.get(worker.setup_ref, timeout=0)
                    worker.state = "ready"
                    self._replaced(worker)
                except SERVER_LOST:
                    self._respawn(worker)
                except Exception:  # the self-check failed: this worker stays out, loudly
                    log.exception("sandbox worker %s failed its setup; leaving it out", worker.name)
                    worker.state = "failed"
                worker.setup_ref = None
        self.metrics.workers(sum(w.state == "ready" for w in self.workers))

    def _apply_size(self) -> None:
        live = [w for w in self.workers if w.state in ("starting", "ready", "respawn")]
        for _ in range(self._target - len(live)):
            self._add_worker()
        for worker in live[self._target:] if len(live) > self._target else []:
            worker.state = "draining"
        for worker in self.workers:
            if worker.state == "draining" and not worker.inflight:
                ray.kill(worker.handle)
                worker.state = "retired"
