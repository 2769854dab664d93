"""WeightBroadcaster: publishes each weight version once; every inference server reloads it in place.

A plain class; the driver makes it a Ray actor. A trainer (rank 0) puts the
state in the object store once, as `runtime.model.weights.shareable(state)` (numpy
arrays, which servers read zero-copy), and hands the broadcaster the reference,
wrapped in a list so Ray passes the reference itself: each server then reads
that one copy, instead of the trainer sending the weights once per server. Versions are
monotonic (an older or equal version is refused); servers reload only between
requests, so no result mixes two versions. A server that dies during a publish, or
is a replacement not yet set up, is left out of that publish (and of its answer): it
loads the newest version itself before it takes requests (the inference pool sees to it),
so a lost server never fails a publish. With `weights.grpc.enabled` the
kept versions are also streamed to servers outside Ray by the server that
`expose(store, weights.grpc)` starts: the spawner hands it in (the driver passes
serve/weight_service.py's `expose`), so this actor never knows the outside face.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ray import method

from runtime.core.calls import wait
from runtime.core.cluster import HEALTH_GROUP
from runtime.core.errors import PeerLost, SetupNotRun
from runtime.core.config import WeightsConfig, WeightsGrpcConfig
from runtime.model.weights import VersionStore

log = logging.getLogger(__name__)
Expose = Callable[[VersionStore, WeightsGrpcConfig], tuple[Any, int]]
"""Starts a server over the store's versions; returns (server with stop(grace), port)."""


class WeightBroadcaster:
    """Publishes to the actors named `servers` (those alive at each publish): inference servers, or
    the inference service, which loads the version into the servers it owns and answers their versions."""

    def __init__(self, weights: WeightsConfig, servers: list[str], name: str = "broadcaster",
                 expose: Expose | None = None):
        self.weights = weights
        self.servers = servers
        self.name = name
        self.expose = expose
        self.store = VersionStore(weights.keep_versions)
        self.refs: dict[int, Any] = {}
        self.server = None
        self.port: int | None = None

    def setup(self) -> dict[str, Any]:
        from runtime.core.metrics import BroadcasterMetrics

        self.metrics = BroadcasterMetrics(self.name)
        if self.weights.grpc.enabled:
            if self.expose is None:
                raise ValueError("weights.grpc.enabled: the broadcaster was given no server to expose versions with")
            self.server, self.port = self.expose(self.store, self.weights.grpc)
        return {"name": self.name, "endpoint": self.endpoint()}

    def publish(self, version: int, state_ref: list) -> dict[str, int]:
        """Publish `version` (state_ref = [ObjectRef of the state dict]) to every live server; returns their versions."""
        import time

        started = time.perf_counter()
        [ref] = state_ref
        timeout = self.weights.publish_timeout_s
        self.store.publish(version, wait(ref, timeout, f"{self.name}: fetch version {version}"))
        self.refs = {v: r for v, r in {**self.refs, version: ref}.items() if v in self.store.versions}
        calls = {name: handle.load_weights.remote(version, ref) for name, handle in self._servers().items()}
        loaded = {}
        for name, call in calls.items():
            try:
                answer = wait(call, timeout, f"{self.name}: {name} loads version {version}")
                loaded.update(answer if isinstance(answer, dict) else {name: answer})
            except (PeerLost, SetupNotRun) as exc:  # lost, or a replacement still starting: it catches up itself
                log.warning("%s: %s left out of version %s (%s)", self.name, name, version, exc)
        self.metrics.published(version, time.perf_counter() - started)
        return loaded

    @method(concurrency_group=HEALTH_GROUP)
    def health(self) -> dict[str, Any]:
        """Answers from its own thread, even during a publish."""
        import os

        return {"name": self.name, "latest": self.store.latest(), "pid": os.getpid()}

    def latest(self) -> tuple[int, list] | None:
        """The newest version and [its object ref] (None before the first), for replacement servers."""
        version = self.store.latest()
        return (version, [self.refs[version]]) if version in self.refs else None

    def endpoint(self) -> str | None:
        return f"{self.weights.grpc.host}:{self.port}" if self.port else None

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)

    def _servers(self) -> dict[str, Any]:
        import ray

        found = {}
        for name in self.servers:
            try:
                found[name] = ray.get_actor(name)
            except ValueError:
                pass
        return found


def latest_of(broadcaster, timeout_s: float = 30.0):
    """For InferencePool(latest=...): the broadcaster's newest (version, object ref), or None.
    `broadcaster` is a handle, or a callable that returns the current one (a supervised role's). While
    the broadcaster is being replaced its name is unknown for a moment: PeerLost, which callers retry."""
    def latest():
        try:
            handle = broadcaster() if callable(broadcaster) else broadcaster
        except ValueError:  # ray.get_actor: no actor of that name (yet)
            raise PeerLost("broadcaster: not registered under its name (being replaced?)") from None
        found = wait(handle.latest.remote(), timeout_s, "broadcaster: latest")
        return None if found is None else (found[0], found[1][0])

    return latest
