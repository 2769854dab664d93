"""InferencePool: InferenceServer actors behind one `generate()` that loses nothing.

The routing the inference service (serve/inference_service.py) runs; tests and benches use it
on its own too.

Contract:
- `generate(requests)` returns exactly one result per request, in request
  order. Requests go out in chunks; which chunk goes to which server when is the
  Scheduler's (runtime/pools/scheduling.py: workload classes, priorities, quotas, version
  pins). A chunk whose server dies is re-sent to a peer (at most
  `inference.max_attempts` servers per request); a late answer from a server
  already given up on is ignored, so no request is answered twice. Requests a higher
  class preempted on a server come back and are sent again (same seeds, same results).
- Versions: `load_weights` publishes to every server, except that servers holding calls
  pinned to their version stay on it until those calls end; nothing is sent to a server
  while it loads. Unpinned chunks go to servers on the newest version.
- A dead server is reported to the supervisor, which replaces it under the same
  actor name (runtime/supervision/); in the background the pool sets the
  replacement up and has it load the newest weight version before it takes
  requests: until then no caller can reach it through the pool.
- Hung or dead: when a chunk outlives its call's `request_timeout_s`, its server is
  probed with `health()`. One that does not answer within `health_timeout_s` is hung: it
  is killed, replaced, and its work re-sent. If it answers, the call fails with
  InferenceTimeout.
- Autoscaling: between placement.inference.min_replicas and max_replicas, by queue wait.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
)

from actors.inference_server import InferenceServer
from runtime.core.cluster import actor_name
from runtime.core.config import FactoryConfig
from runtime.core.calls import await_setup
from runtime.core.errors import CallTimeout, InferenceTimeout, PeerLost, InferenceUnavailable, StaleVersionError
from runtime.core.generation import GenerationRequest, GenerationResult
from runtime.core.metrics import PoolMetrics
from runtime.pools.scheduling import Autoscaler, ClassStats, Scheduler, Ticket
from runtime.supervision.role import Role
from runtime.supervision.supervisor import Supervisor, standalone

log = logging.getLogger(__name__)
SERVER_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class Slot:
    """One server position in the pool; its handle changes when it is replaced."""

    index: int
    name: str
    handle: Any = None
    ready: bool = False
    load: int = 0
    """Sequences in flight on it."""
    loads: collections.Counter = field(default_factory=collections.Counter)
    """Sequences in flight on it per priority."""
    generation: int = 0
    version: int | None = 0
    """The version it serves; None while it loads one."""
    held_back: bool = False
    """Kept on its version for pinned calls while newer versions are published."""


class InferencePool:
    def __init__(self, cfg: FactoryConfig, model_path: Path | str,
                 latest: Callable[[], tuple[int, Any] | None] | None = None, supervisor: Supervisor | None = None):
        """`latest` answers (version, object ref) of the newest weights when something other than
        `load_weights` publishes them (the WeightBroadcaster); replacements load that. Without a
        `supervisor` (a pool on its own: tests, benches) the pool makes one of its own."""
        self.cfg = cfg
        self.supervisor = supervisor or standalone(cfg)
        self.model_path = str(model_path)
        self.slots = [
            Slot(i, name) for i, name in enumerate(server_names(cfg))
        ]
        self.counts = {"retried": 0, "replaced": 0}
        self.metrics = PoolMetrics(cfg.experiment.name)
        self.scheduler = Scheduler(cfg.inference.classes, cfg.inference.max_num_seqs, exclusive=cfg.inference.preempt)
        self.class_stats = ClassStats(cfg.experiment.name, list(cfg.inference.classes))
        self._weights: tuple[int, Any] | None = None
        self._external_latest = latest
        self._pins: collections.Counter[int] = collections.Counter()
        """Calls in progress pinned to each version."""
        self._chunk_threads = ThreadPoolExecutor(512, thread_name_prefix="chunk")
        self._cv = threading.Condition()
        place, scale = cfg.placement.inference, cfg.inference.autoscale
        self.autoscaler = Autoscaler(place.min_replicas or place.replicas, place.max_replicas or place.replicas,
                                     scale.up_after_s, scale.down_after_s)
        self._stopped = threading.Event()
        self._replacing: dict[str, threading.Thread] = {}
        """Replacements under way, by server name (settle() waits for them)."""

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> InferencePool:
        """Start every server and wait for all of them (setup_timeout_s)."""
        setups = {slot.index: self._spawn(slot) for slot in self.slots}
        self._await_setups(setups)
        with self._cv:
            for slot in self.slots:
                slot.ready = True
            self.metrics.servers(len(self.slots))
        if self.autoscaler.low < self.autoscaler.high:
            threading.Thread(target=self._autoscale, name="autoscale", daemon=True).start()
        return self

    def settle(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for replacements under way, so a run that ends right after a loss
        still ends with its servers whole and the replacement recorded; the names still replacing."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._replacing.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return [name for name, thread in self._replacing.items() if thread.is_alive()]

    def shutdown(self) -> None:
        self._stopped.set()
        with self._cv:
            for slot in self.slots:
                slot.ready, slot.handle = False, None
        self._chunk_threads.shutdown(wait=False, cancel_futures=True)
        for slot in self.slots:
            self.supervisor.drop(slot.name)

    # ---- requests --------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], timeout: float | None = None,
                 version: int | None = None, pin: bool = False) -> list[GenerationResult]:
        """One result per request, in order. The requests share one workload class (the first's);
        `version` pins the call to a version, `pin` to the newest one now (an eval finishes on the
        version it started with); otherwise each chunk takes the newest. See the module docstring for
        retries and timeouts, and runtime/pools/scheduling.py for who goes first."""
        requests = list(requests)
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique within one generate() call")
        if not requests:
            return []
        workload = requests[0].workload.key
        timeout = timeout or self.cfg.inference.request_timeout_s
        deadline = time.monotonic() + timeout
        pinned = self._pin(version, pin)
        try:
            futures = [self._chunk_threads.submit(self._run_chunk, chunk, workload, pinned, deadline, timeout)
                       for chunk in self._chunks(requests, workload)]
            results = {r.request_id: r for future in futures for r in future.result()}
        finally:
            self._unpin(pinned)
        return [results[i] for i in ids]

    def stream(self, request: GenerationRequest, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """InferenceServer.generate_stream on a server the scheduler gives the request's class; a
        server lost before the first delta is replaced and the request re-sent to a peer."""
        timeout = timeout or self.cfg.inference.request_timeout_s
        deadline = time.monotonic() + timeout
        request.priority = self.cfg.inference.classes[request.workload.key].priority
        for _ in range(self.cfg.inference.max_attempts):
            ticket, sent, final = self._acquire(request.workload.key, request.sampling.n, None, deadline), False, None
            try:
                for ref in ticket.slot.handle.generate_stream.options(num_returns="streaming").remote(request):
                    item = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                    sent, final = True, item.get("result")
                    yield item
                return
            except SERVER_LOST:
                self._lost(ticket.slot, ticket.generation)
                if sent:
                    raise InferenceUnavailable(f"{ticket.slot.name} was lost while streaming request {request.id}") from None
            except GetTimeoutError:
                raise InferenceTimeout(f"request {request.id}: no delta within {timeout}s") from None
            finally:
                self._release(ticket, {"results": [final], "preempted": []} if final is not None else None)
        raise InferenceUnavailable(f"request {request.id} failed on {self.cfg.inference.max_attempts} servers")

    def stats(self) -> dict[str, Any]:
        """Per workload class: requests, sequences and tokens served, seconds waited, sequence-seconds
        held on servers, and what waits now; with the capacity (sequences) and the time."""
        with self._cv:
            return self.class_stats.snapshot(self.scheduler, self._capacity())

    def load_weights(self, version: int, weights_ref: Any) -> dict[str, int]:
        """Every ready server reloads `version` in place from one object-store copy, except servers
        holding calls pinned to their version: those follow once the calls end (at least one server
        always takes it now). Nothing is sent to a server while it loads."""
        with self._cv:
            if self._weights is not None and version < self._weights[0]:
                raise StaleVersionError(f"refusing version {version}: version {self._weights[0]} is published")
            self._weights = (version, weights_ref)
            targets = [s for s in self.slots if s.ready and s.version is not None and not s.held_back]
            held = [s for s in targets if self._pins[s.version] > 0]
            if held and len(held) == len(targets):
                held.remove(min(held, key=lambda s: s.load))
            loading = [(s, s.generation) for s in targets if s not in held]
            for slot in held:
                slot.held_back = True
            for slot, _ in loading:
                slot.version = None
        calls = {slot.handle.load_weights.remote(version, weights_ref): (slot, g) for slot, g in loading}
        timeout = self.cfg.inference.request_timeout_s
        for ref, (slot, generation) in calls.items():
            try:
                self._serving(slot, generation, ray.get(ref, timeout=timeout))
            except SERVER_LOST:
                self._lost(slot, generation)
            except GetTimeoutError:
                raise InferenceTimeout(f"{slot.name} did not load version {version} within {timeout}s") from None
        return self.versions()

    def newest(self) -> int:
        """The newest version published through the pool (0 before any)."""
        with self._cv:
            return self._newest_version()

    def versions(self) -> dict[str, int]:
        """Weight version of every ready server."""
        return {name: h["version"] for name, h in self.health().items() if h.get("ready")}

    def health(self) -> dict[str, dict[str, Any]]:
        with self._cv:
            slots = [(s.name, s.handle) for s in self.slots if s.ready]
        refs = {name: handle.health.remote() for name, handle in slots}
        out = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=self.cfg.inference.health_timeout_s)
            except (GetTimeoutError, *SERVER_LOST) as exc:
                out[name] = {"name": name, "ready": False, "error": type(exc).__name__}
        return out

    # ---- routing ---------------------------------------------------------

    def _chunks(self, requests: list[GenerationRequest], workload: str) -> list[list[GenerationRequest]]:
        """About two chunks per ready server, at most `inference.chunk_requests` requests each."""
        parts = 2 * max(1, sum(s.ready for s in self.slots))
        size = min(math.ceil(len(requests) / parts), self.cfg.inference.chunk_requests)
        priority = self.cfg.inference.classes[workload].priority
        for r in requests:
            r.priority = priority
        return [requests[i : i + size] for i in range(0, len(requests), size)]

    def _run_chunk(self, requests: list[GenerationRequest], workload: str, pinned: int | None,
                   deadline: float, timeout: float) -> list[GenerationResult]:
        """Wait for a server (the scheduler's turn), send, collect; re-send to a peer what a lost
        server held, and later what a higher class preempted."""
        done: list[GenerationResult] = []
        attempts = 0
        while requests:
            ticket = self._acquire(workload, sum(r.sampling.n for r in requests), pinned, deadline)
            answer = None
            try:
                answer = self._await(ticket, requests, deadline)
            finally:
                self._release(ticket, answer)
            if answer is None:
                attempts += 1
                if attempts >= self.cfg.inference.max_attempts:
                    raise InferenceUnavailable(f"{len(requests)} requests failed on {attempts} servers "
                                               "(inference.max_attempts)")
                self.counts["retried"] += len(requests)
                self.metrics.retried(len(requests))
                deadline = max(deadline, time.monotonic() + timeout / 2)  # a lost server's wait is not the chunk's
                continue
            done += answer["results"]
            preempted = set(answer["preempted"])
            requests = [r for r in requests if r.id in preempted]
        return done

    def _acquire(self, workload: str, seqs: int, pinned: int | None, deadline: float) -> Ticket:
        with self._cv:
            ticket = self.scheduler.enqueue(workload, seqs, pinned)
            while True:
                if self.scheduler.grant(self.slots, self._newest_version()):
                    self._cv.notify_all()
                if ticket.error is not None:
                    raise ticket.error
                if ticket.slot is not None:
                    self.class_stats.granted(ticket)
                    return ticket
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.scheduler.withdraw(ticket)
                    if not any(s.ready for s in self.slots):
                        raise InferenceUnavailable("no inference server is ready; replacements did not come up in time")
                    raise InferenceTimeout(f"a {workload} chunk waited {time.monotonic() - ticket.queued_at:.0f}s "
                                           "for room behind other classes (inference.request_timeout_s, inference.classes)")
                self._cv.wait(timeout=remaining)

    def _await(self, ticket: Ticket, requests: list[GenerationRequest], deadline: float) -> dict[str, Any] | None:
        """The server's answer ({results, preempted}), or None when it was lost or hung (it is then replaced)."""
        slot = ticket.slot
        try:
            if not self.cfg.inference.preempt:
                results = ray.get(slot.handle.generate.remote(requests), timeout=max(0.0, deadline - time.monotonic()))
                return {"results": results, "preempted": []}
            return ray.get(slot.handle.generate_chunk.remote(requests), timeout=max(0.0, deadline - time.monotonic()))
        except SERVER_LOST:
            self._lost(slot, ticket.generation)
            return None
        except GetTimeoutError:
            if self._answers(slot):
                raise InferenceTimeout(f"{len(requests)} requests unfinished on {slot.name} by their deadline; "
                                       "it answers health probes (raise inference.request_timeout_s?)") from None
            log.warning("%s did not answer a health probe; treating it as hung", slot.name)
            ray.kill(slot.handle)
            self._lost(slot, ticket.generation)
            return None

    def _release(self, ticket: Ticket, answer: dict[str, Any] | None) -> None:
        with self._cv:
            self.scheduler.done(ticket)
            self.class_stats.finished(ticket, answer, self._capacity())
            self._cv.notify_all()

    def _pin(self, version: int | None, pin: bool) -> int | None:
        """The version a call is pinned to (None: each chunk takes the newest), held until _unpin."""
        with self._cv:
            if version is None and pin:
                version = max((s.version for s in self.slots if s.ready and s.version is not None), default=0)
            if version is not None:
                self._pins[version] += 1
            return version

    def _unpin(self, version: int | None) -> None:
        """A pinned call ended: servers held back on its version take the newest once no call needs it."""
        if version is None:
            return
        with self._cv:
            self._pins[version] -= 1
            behind = [s for s in self.slots if s.held_back and s.version == version] if not self._pins[version] else []
            for slot in behind:
                slot.held_back = False
        for slot in behind:
            threading.Thread(target=self._advance, args=(slot,), name=f"advance-{slot.name}", daemon=True).start()

    def _answers(self, slot: Slot) -> bool:
        try:
            ray.get(slot.handle.health.remote(), timeout=self.cfg.inference.health_timeout_s)
            return True
        except (GetTimeoutError, *SERVER_LOST):
            return False

    # ---- autoscaling -----------------------------------------------------

    def _autoscale(self) -> None:
        """Every autoscale.interval_s: ask the Autoscaler, then add or remove one server."""
        while not self._stopped.wait(self.cfg.inference.autoscale.interval_s):
            with self._cv:
                now = time.monotonic()
                oldest = max((now - t.queued_at for t in self.scheduler.waiting), default=0.0)
                in_flight = sum(s.load for s in self.slots)
                step = self.autoscaler.decide(len(self.slots), oldest, in_flight, self.cfg.inference.max_num_seqs, now)
            try:
                if step > 0:
                    self._grow(oldest)
                elif step < 0:
                    self._shrink()
            except Exception:  # the autoscaler is a boundary: the pool serves on at its size
                log.exception("autoscaling failed; the service stays at %d servers", len(self.slots))

    def _grow(self, waited: float) -> None:
        """A new server: started, loaded with the newest version, then opened for requests."""
        started = time.perf_counter()
        with self._cv:
            slot = Slot(len(self.slots), actor_name(self.cfg.experiment.name, "inference", len(self.slots)))
            self.slots.append(slot)
        self._await_setups({slot.index: self._spawn(slot)})
        self._catch_up(slot)
        self.supervisor.events.record("scaled", "inference", f"{slot.name} added: requests waited {waited:.1f} s; "
                                      f"{len(self.slots)} servers, serving v{slot.version}",
                                      time.perf_counter() - started, actor=slot.name)

    def _shrink(self) -> None:
        """The newest server stops taking requests, finishes what it holds, and goes."""
        with self._cv:
            slot = self.slots[-1]
            if not slot.ready or slot.held_back:
                return
            slot.ready = False
            while slot.load and not self._stopped.is_set():
                self._cv.wait(timeout=1.0)
            self.slots.pop()
            self.metrics.servers(sum(s.ready for s in self.slots))
        self.supervisor.drop(slot.name)
        self.supervisor.events.record("scaled", "inference", f"{slot.name} removed: idle for "
                                      f"{self.cfg.inference.autoscale.down_after_s:g} s; {len(self.slots)} servers",
                                      actor=slot.name)

    # ---- replacement -----------------------------------------------------

    def _lost(self, slot: Slot, generation: int) -> None:
        """Take a dead server out of routing and start its replacement (once per death)."""
        with self._cv:
            if slot.generation != generation:
                return
            slot.generation += 1
            slot.ready, slot.load, slot.version, slot.held_back = False, 0, None, False
            slot.loads.clear()
            old = slot.handle
            self.metrics.servers(sum(s.ready for s in self.slots))
        log.warning("inference server %s lost; replacing it", slot.name)
        thread = threading.Thread(target=self._replace, args=(slot, old), name=f"replace-{slot.name}", daemon=True)
        self._replacing[slot.name] = thread
        thread.start()

    def _replace(self, slot: Slot, old: Any) -> None:
        started = time.perf_counter()
        try:
            slot.handle = self.supervisor.replace(slot.name, "died", restart=False)
            self._await_setups({slot.index: slot.handle.setup.remote()})
        except Exception as exc:  # the replacement thread is a boundary: the slot stays down, and says so
            self._replacement_failed(slot, exc)
            return
        for attempt in range(1, self.cfg.inference.max_attempts + 1):
            try:
                self._catch_up(slot)
                break
            except Exception as exc:  # the new server is up; loading the newest version may be tried again
                if attempt == self.cfg.inference.max_attempts or self._stopped.is_set():
                    self._replacement_failed(slot, exc)
                    return
                log.warning("%s: loading the newest version failed (%s); trying again", slot.name, exc)
                time.sleep(1.0)
        self.counts["replaced"] += 1
        self.metrics.replaced()
        self.supervisor.recovered(slot.name, f"{slot.name} replaced; serving version {self._version_of(slot)}",
                                  time.perf_counter() - started)

    def _replacement_failed(self, slot: Slot, exc: Exception) -> None:
        log.error("replacing %s failed; the pool runs without it", slot.name, exc_info=exc)
        self.supervisor.events.record("failed", "inference", f"{slot.name}: its replacement failed "
                                      f"({type(exc).__name__}: {str(exc)[:200]}); the service runs without it",
                                      actor=slot.name)

    def _version_of(self, slot: Slot) -> int | str:
        try:
            return ray.get(slot.handle.get_version.remote(), timeout=self.cfg.inference.health_timeout_s)
        except (GetTimeoutError, *SERVER_LOST):
            return "?"

    def _catch_up(self, slot: Slot) -> None:
        """Load the newest version, then open for requests, without missing a version published meanwhile."""
        while True:
            weights = self._newest()
            if weights is not None:
                try:
                    ray.get(slot.handle.load_weights.remote(*weights), timeout=self.cfg.inference.request_timeout_s)
                except StaleVersionError:  # a publish reached it first with a newer version: ask again
                    continue
            external = self._external_latest_retrying() if self._external_latest else None
            with self._cv:
                if (external if self._external_latest else self._weights) == weights:
                    slot.ready = True
                    slot.version = self._newest_version() if self._weights is not None else 0
                    self.metrics.servers(sum(s.ready for s in self.slots))
                    self._cv.notify_all()
                    return

    def _newest(self) -> tuple[int, Any] | None:
        if self._external_latest is not None:
            return self._external_latest_retrying()
        with self._cv:
            return self._weights

    def _external_latest_retrying(self) -> tuple[int, Any] | None:
        """The publisher's newest version; while the publisher itself is being replaced, ask again
        (for up to inference.setup_timeout_s)."""
        deadline = time.monotonic() + self.cfg.inference.setup_timeout_s
        while True:
            try:
                return self._external_latest()
            except (PeerLost, CallTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _advance(self, slot: Slot) -> None:
        """A server held back for pinned calls takes the newest version (and any published meanwhile)."""
        with self._cv:
            generation, slot.version = slot.generation, None
        while True:
            weights = self._newest()
            try:
                version = ray.get(slot.handle.load_weights.remote(*weights), timeout=self.cfg.inference.request_timeout_s)
            except SERVER_LOST:
                self._lost(slot, generation)
                return
            except GetTimeoutError:
                log.warning("%s did not load version %s in time; it is replaced", slot.name, weights[0])
                ray.kill(slot.handle)
                self._lost(slot, generation)
                return
            with self._cv:
                if self._newest_version() == version:
                    self._serving(slot, generation, version)
                    return

    def _serving(self, slot: Slot, generation: int, version: int) -> None:
        with self._cv:
            if slot.generation == generation:
                slot.version = version
            self._cv.notify_all()

    def _capacity(self) -> int:
        return self.cfg.inference.max_num_seqs * sum(s.ready for s in self.slots)

    def _newest_version(self) -> int:
        if self._weights is not None:
            return self._weights[0]
        return max((s.version for s in self.slots if s.ready and s.version is not None), default=0)

    def _spawn(self, slot: Slot) -> Any:
        place = self.cfg.placement.inference
        args = (self.cfg.inference, self.model_path, slot.name, slot.index, self.cfg.model.dtype)
        options = {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus, "max_concurrency": place.max_concurrency,
                   **({"resources": dict(place.resources)} if place.resources else {})}
        slot.handle = self.supervisor.spawn(Role("inference", slot.index, slot.name, InferenceServer, args, options))
        return slot.handle.setup.remote()

    def _await_setups(self, setups: dict[int, Any]) -> None:
        await_setup({self.slots[i].name: ref for i, ref in setups.items()}, self.cfg.inference.setup_timeout_s,
                    "inference.setup_timeout_s")


def server_names(cfg: FactoryConfig) -> list[str]:
    """The actor names of the experiment's inference servers (what the broadcaster publishes to)."""
    return [actor_name(cfg.experiment.name, "inference", i) for i in range(cfg.placement.inference.replicas)]
