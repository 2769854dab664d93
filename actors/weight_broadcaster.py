"""WeightBroadcaster: publishes each weight version once; every inference server reloads it in place.

A plain class; the driver makes it a Ray actor. A trainer (rank 0) puts the
state in the object store once, as `runtime.weights.shareable(state)` (numpy
arrays, which servers read zero-copy), and hands the broadcaster the reference,
wrapped in a list so Ray passes the reference itself: each server then reads
that one copy, instead of the trainer sending the weights once per server. Versions are
monotonic (an older or equal version is refused); servers reload only between
requests, so no result mixes two versions. With `weights.grpc.enabled` the
kept versions are also streamed by a WeightService to servers outside Ray.
"""

from __future__ import annotations

from typing import Any

from runtime.config import FactoryConfig
from runtime.weights import VersionStore


class WeightBroadcaster:
    def __init__(self, cfg: FactoryConfig, name: str = "broadcaster"):
        self.cfg = cfg
        self.name = name
        self.store = VersionStore(cfg.weights.keep_versions)
        self.refs: dict[int, Any] = {}
        self.server = None
        self.port: int | None = None

    def setup(self) -> dict[str, Any]:
        from runtime.metrics import BroadcasterMetrics

        self.metrics = BroadcasterMetrics(self.name)
        grpc_cfg = self.cfg.weights.grpc
        if grpc_cfg.enabled:
            from serve.weight_service import serve

            self.server, self.port = serve(self.store, grpc_cfg.host, grpc_cfg.port, token_file=grpc_cfg.token_file)
        return {"name": self.name, "endpoint": self.endpoint()}

    def publish(self, version: int, state_ref: list) -> dict[str, int]:
        """Publish `version` (state_ref = [ObjectRef of the state dict]) to every live server; returns their versions."""
        import time

        import ray

        started = time.perf_counter()
        [ref] = state_ref
        self.store.publish(version, ray.get(ref, timeout=self.cfg.weights.publish_timeout_s))
        self.refs = {v: r for v, r in {**self.refs, version: ref}.items() if v in self.store.versions}
        servers = self._servers()
        calls = [handle.load_weights.remote(version, ref) for handle in servers.values()]
        done = ray.get(calls, timeout=self.cfg.weights.publish_timeout_s)
        self.metrics.published(version, time.perf_counter() - started)
        return dict(zip(servers, done))

    def latest(self) -> tuple[int, list] | None:
        """The newest version and [its object ref] (None before the first), for replacement servers."""
        version = self.store.latest()
        return (version, [self.refs[version]]) if version in self.refs else None

    def endpoint(self) -> str | None:
        return f"{self.cfg.weights.grpc.host}:{self.port}" if self.port else None

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)

    def _servers(self) -> dict[str, Any]:
        import ray

        found = {}
        for i in range(self.cfg.placement.inference.replicas):
            name = f"{self.cfg.experiment.name}/inference/{i}"
            try:
                found[name] = ray.get_actor(name)
            except ValueError:
                pass
        return found


def latest_of(broadcaster, timeout_s: float = 30.0):
    """For InferencePool(latest=...): the broadcaster's newest (version, object ref), or None."""
    import ray

    def latest():
        found = ray.get(broadcaster.latest.remote(), timeout=timeout_s)
        return None if found is None else (found[0], found[1][0])

    return latest
