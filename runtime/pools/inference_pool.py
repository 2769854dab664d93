"""InferencePool: InferenceServer actors behind one `generate()` that loses nothing.

Contract:
- `generate(requests)` returns exactly one result per request, in request
  order. Requests go out in chunks, each to the server with the fewest
  requests outstanding. A chunk whose server dies is re-sent to a peer (at most
  `inference.max_attempts` servers per request); a late answer from a server
  already given up on is ignored, so no request is answered twice.
- A dead server is reported to the supervisor, which replaces it under the same
  actor name (runtime/supervision/); in the background the pool sets the
  replacement up and has it load the newest weight version before it takes
  requests: until then no caller can reach it through the pool.
- Hung or dead: when a call outlives `request_timeout_s`, every server still
  holding work is probed with `health()`. One that does not answer within
  `health_timeout_s` is hung: it is killed, replaced, and its work re-sent. If
  they all answer, the call fails with InferenceTimeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    generation: int = 0


@dataclass
class Chunk:
    requests: list[GenerationRequest]
    slot: Slot
    generation: int
    attempts: int = 1


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
        self._weights: tuple[int, Any] | None = None
        self._external_latest = latest
        self._cv = threading.Condition()

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> InferencePool:
        """Start every server and wait for all of them (setup_timeout_s)."""
        setups = {slot.index: self._spawn(slot) for slot in self.slots}
        self._await_setups(setups)
        with self._cv:
            for slot in self.slots:
                slot.ready = True
            self.metrics.servers(len(self.slots))
        return self

    def shutdown(self) -> None:
        with self._cv:
            for slot in self.slots:
                slot.ready, slot.handle = False, None
        for slot in self.slots:
            self.supervisor.drop(slot.name)

    # ---- requests --------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], timeout: float | None = None) -> list[GenerationResult]:
        """One result per request, in order; see the module docstring for retries and timeouts."""
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique within one generate() call")
        timeout = timeout or self.cfg.inference.request_timeout_s
        deadline = time.monotonic() + timeout
        results: dict[str, GenerationResult] = {}
        inflight = {self._send(chunk): chunk for chunk in self._chunks(list(requests), deadline)}
        try:
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    deadline = self._on_deadline(inflight, timeout)
                    continue
                chunk = inflight.pop(done[0])
                self._collect(done[0], chunk, inflight, results, deadline)
        finally:
            for chunk in inflight.values():
                self._release(chunk)
        return [results[i] for i in ids]

    def load_weights(self, version: int, weights_ref: Any) -> dict[str, int]:
        """Every ready server reloads `version` in place from one object-store copy."""
        with self._cv:
            self._weights = (version, weights_ref)
            targets = [(s, s.generation, s.handle) for s in self.slots if s.ready]
        calls = {s.handle.load_weights.remote(version, weights_ref): (s, g) for s, g, _ in targets}
        timeout = self.cfg.inference.request_timeout_s
        for ref, (slot, generation) in calls.items():
            try:
                ray.get(ref, timeout=timeout)
            except SERVER_LOST:
                self._lost(slot, generation)
            except GetTimeoutError:
                raise InferenceTimeout(f"{slot.name} did not load version {version} within {timeout}s") from None
        return self.versions()

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

    def _chunks(self, requests: list[GenerationRequest], deadline: float) -> list[Chunk]:
        if not requests:
            return []
        parts = 2 * max(1, sum(s.ready for s in self.slots))
        size = math.ceil(len(requests) / parts)
        return [Chunk(requests[i : i + size], *self._pick(deadline, size)) for i in range(0, len(requests), size)]

    def _pick(self, deadline: float, load: int) -> tuple[Slot, int]:
        """The ready server with the least outstanding work; waits for a replacement if none is ready."""
        with self._cv:
            while not any(s.ready for s in self.slots):
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise InferenceUnavailable("no inference server is ready; replacements did not come up in time")
            slot = min((s for s in self.slots if s.ready), key=lambda s: s.load)
            slot.load += load
            return slot, slot.generation

    def _send(self, chunk: Chunk) -> Any:
        return chunk.slot.handle.generate.remote(chunk.requests)

    def _collect(self, ref, chunk: Chunk, inflight: dict, results: dict, deadline: float) -> None:
        self._release(chunk)
        try:
            for result in ray.get(ref, timeout=self.cfg.inference.health_timeout_s):
                results[result.request_id] = result
        except SERVER_LOST:
            self._lost(chunk.slot, chunk.generation)
            self._retry(chunk, inflight, deadline)

    def _retry(self, chunk: Chunk, inflight: dict, deadline: float) -> None:
        if chunk.attempts >= self.cfg.inference.max_attempts:
            raise InferenceUnavailable(
                f"{len(chunk.requests)} requests failed on {chunk.attempts} servers (inference.max_attempts)"
            )
        slot, generation = self._pick(deadline, len(chunk.requests))
        retry = Chunk(chunk.requests, slot, generation, chunk.attempts + 1)
        self.counts["retried"] += len(chunk.requests)
        self.metrics.retried(len(chunk.requests))
        inflight[self._send(retry)] = retry

    def _release(self, chunk: Chunk) -> None:
        with self._cv:
            if chunk.slot.generation == chunk.generation:
                chunk.slot.load -= len(chunk.requests)

    def _on_deadline(self, inflight: dict, timeout: float) -> float:
        """Kill and replace servers that do not answer a health probe; otherwise time out."""
        hung = {id(c.slot): c for c in inflight.values() if not self._answers(c.slot)}
        if not hung:
            raise InferenceTimeout(
                f"{sum(len(c.requests) for c in inflight.values())} requests unfinished after {timeout}s; "
                "their servers answer health probes (raise inference.request_timeout_s?)"
            )
        for chunk in hung.values():
            log.warning("%s did not answer a health probe; treating it as hung", chunk.slot.name)
            ray.kill(chunk.slot.handle)
        return time.monotonic() + timeout

    def _answers(self, slot: Slot) -> bool:
        try:
            ray.get(slot.handle.health.remote(), timeout=self.cfg.inference.health_timeout_s)
            return True
        except (GetTimeoutError, *SERVER_LOST):
            return False

    # ---- replacement -----------------------------------------------------

    def _lost(self, slot: Slot, generation: int) -> None:
        """Take a dead server out of routing and start its replacement (once per death)."""
        with self._cv:
            if slot.generation != generation:
                return
            slot.generation += 1
            slot.ready, slot.load = False, 0
            old = slot.handle
            self.metrics.servers(sum(s.ready for s in self.slots))
        log.warning("inference server %s lost; replacing it", slot.name)
        threading.Thread(target=self._replace, args=(slot, old), name=f"replace-{slot.name}", daemon=True).start()

    def _replace(self, slot: Slot, old: Any) -> None:
        started = time.perf_counter()
        try:
            slot.handle = self.supervisor.replace(slot.name, "died", restart=False)
            self._await_setups({slot.index: slot.handle.setup.remote()})
            self._catch_up(slot)
        except Exception:  # the replacement thread is a boundary: the slot stays down, callers see no ready server
            log.exception("replacing %s failed; the pool runs without it", slot.name)
            return
        self.counts["replaced"] += 1
        self.metrics.replaced()
        self.supervisor.recovered(slot.name, f"{slot.name} replaced; serving version {self._version_of(slot)}",
                                  time.perf_counter() - started)

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
