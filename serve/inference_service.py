"""InferenceService: one named actor through which every caller reaches the inference servers.

The RL loop, evals, synthetic generation, the playground, `factory generate --live` and a Python
client outside the job all call this actor (`<experiment>/service/0`) through one thin client
(runtime/core/inference_client.py). Inside, the InferencePool routes: workload classes with
priorities and quotas (runtime/pools/scheduling.py), version pins, retries on a peer when a
server is lost, and replacements that load the newest version before they take requests. Weight
versions are published through it (the WeightBroadcaster's target is this actor), so it always
knows which server holds which version.

A plain Ray actor rather than a Serve deployment: the servers are stateful (each holds one weight
version and its KV cache), the routing needs one view of them all (pins, quotas, who holds what),
and a publish must reach exactly the servers this router knows; Serve's replicas of a router would
each have their own view, and its autoscaling follows request counts, not a queue of classes.

The service owns its servers (it spawns them): if the service is lost, Ray ends them with it, and
its replacement (spawned by the run's supervisor under the same name) starts fresh servers and
loads the broadcaster's newest version before it answers. Callers retry a call whose service was
lost, within their timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import method

from runtime.core.cluster import HEALTH_GROUP
from runtime.core.config import FactoryConfig
from runtime.core.errors import SetupNotRun
from runtime.core.generation import GenerationRequest, GenerationResult
from runtime.pools.inference_pool import InferencePool
from runtime.supervision.events import EventLog
from runtime.supervision.supervisor import Supervisor


class InferenceService:
    def __init__(self, cfg: FactoryConfig, model_path: str | Path, run_dir: str | Path | None = None,
                 broadcaster: str | None = None, name: str = "service"):
        """`broadcaster`: the name of the WeightBroadcaster whose newest version a fresh service and its
        replacement servers load; without one the service serves what is published through it."""
        self.cfg, self.model_path, self.run_dir = cfg, str(model_path), run_dir
        self.broadcaster, self.name = broadcaster, name
        self.pool: InferencePool | None = None
        self.models: dict[str, InferencePool] = {}
        """Other models (an eval judge: a saved version or any HF directory), one server each, by path."""
        self._models_lock = threading.Lock()

    def setup(self) -> dict[str, Any]:
        """Start every server; load the broadcaster's newest version, if any, before answering."""
        from actors.weight_broadcaster import latest_of

        latest = latest_of(lambda: ray.get_actor(self.broadcaster)) if self.broadcaster else None
        events = EventLog(self.run_dir, self.cfg.experiment.name, say=print)
        pool = InferencePool(self.cfg, self.model_path, latest=latest,
                             supervisor=Supervisor(self.cfg.supervision, events)).start()
        newest = latest() if latest else None
        if newest is not None:
            pool.load_weights(*newest)
        self.pool = pool
        return {"name": self.name, "servers": [s.name for s in pool.slots], "version": pool.newest()}

    def generate(self, requests: list[GenerationRequest], timeout: float | None = None,
                 version: int | None = None, pin: bool = False, model: str | None = None) -> list[GenerationResult]:
        """One result per request, in order (InferencePool.generate). `model`: an HF model directory other
        than the run's (a judge), served by a server of its own that starts on first use."""
        pool = self._pool() if model is None else self._model(model)
        return pool.generate(requests, timeout, version, pin)

    def generate_stream(self, request: GenerationRequest) -> Iterator[dict[str, Any]]:
        """Text deltas, then `{"result": ...}` (InferenceServer.generate_stream), on a server the
        scheduler gives the request's class. Call it as a Ray streaming generator."""
        yield from self._pool().stream(request)

    def load_weights(self, version: int, weights: Any) -> dict[str, int]:
        """Publish `version` to the servers (what the WeightBroadcaster calls); returns server versions."""
        return self._pool().load_weights(version, weights)

    def newest(self) -> int:
        return self._pool().newest()

    def versions(self) -> dict[str, int]:
        return self._pool().versions()

    def stats(self) -> dict[str, Any]:
        """Per workload class (InferencePool.stats), with the servers' versions."""
        pool = self._pool()
        return {**pool.stats(), "servers": {s.name: s.version for s in pool.slots if s.ready}}

    def server(self, index: int) -> list:
        """[the handle of server `index`] (fault drills signal its process)."""
        return [self._pool().slots[index].handle]

    @method(concurrency_group=HEALTH_GROUP)
    def health(self) -> dict[str, Any]:
        """Answers from its own thread, whatever the routing threads do."""
        ready = self.pool is not None
        return {"name": self.name, "pid": os.getpid(), "ready": ready,
                **({"servers": sum(s.ready for s in self.pool.slots)} if ready else {})}

    def settle(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for server replacements under way; the servers still replacing."""
        deadline = time.monotonic() + timeout_s
        return [name for pool in [self.pool, *self.models.values()] if pool is not None
                for name in pool.settle(max(0.0, deadline - time.monotonic()))]

    def shutdown(self) -> None:
        for pool in [self.pool, *self.models.values()]:
            if pool is not None:
                pool.shutdown()

    def _model(self, path: str) -> InferencePool:
        """The pool of the model at `path` (its servers are named `<experiment>/model<k>/inference/0`)."""
        with self._models_lock:
            if path not in self.models:
                exp = self.cfg.experiment
                inference = self.cfg.placement.inference.model_copy(update={"replicas": 1, "min_replicas": 1,
                                                                            "max_replicas": 1})
                cfg = self.cfg.model_copy(update={
                    "experiment": exp.model_copy(update={"name": f"{exp.name}/model{len(self.models)}"}),
                    "placement": self.cfg.placement.model_copy(update={"inference": inference})})
                self.models[path] = InferencePool(cfg, path, supervisor=self._pool().supervisor).start()
            return self.models[path]

    def _pool(self) -> InferencePool:
        if self.pool is None:
            raise SetupNotRun(f"{self.name}: setup() has not run")
        return self.pool
