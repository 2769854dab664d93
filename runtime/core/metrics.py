"""Metrics exported through `ray.util.metrics`, so the Ray dashboard shows them.

Outside a Ray worker (a plain class under test, `factory generate`) every
metric is a no-op: the code that records stays the same.
"""

from __future__ import annotations

from typing import Any


class _Null:
    def set(self, *args: Any, **kwargs: Any) -> None:
        pass

    inc = observe = set


def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...] = (), **kwargs: Any):
    import ray

    if not ray.is_initialized():
        return _Null()
    from ray.util import metrics

    return getattr(metrics, kind)(name, description=description, tag_keys=tag_keys, **kwargs)


class ServerMetrics:
    def __init__(self, server: str):
        self.tags = {"server": server}
        self._version = _metric("Gauge", "factory_inference_weight_version", "Weight version served", ("server",))
        self._in_flight = _metric("Gauge", "factory_inference_in_flight", "Requests in the engine", ("server",))
        self._tokens = _metric("Counter", "factory_inference_generated_tokens", "Tokens generated", ("server",))
        self._requests = _metric("Counter", "factory_inference_requests", "Requests finished", ("server",))
        self._preempted = _metric("Counter", "factory_inference_preempted", "Requests preempted by a higher class",
                                  ("server",))
        self.version(0)

    def preempted(self, n: int) -> None:
        self._preempted.inc(n, tags=self.tags)

    def version(self, v: int) -> None:
        self._version.set(v, tags=self.tags)

    def in_flight(self, n: int) -> None:
        self._in_flight.set(n, tags=self.tags)

    def finished(self, tokens: int) -> None:
        self._requests.inc(1, tags=self.tags)
        if tokens:
            self._tokens.inc(tokens, tags=self.tags)


class PoolMetrics:
    def __init__(self, experiment: str):
        self.tags = {"experiment": experiment}
        self._retried = _metric("Counter", "factory_pool_requests_retried", "Requests re-sent to a peer", ("experiment",))
        self._replaced = _metric("Counter", "factory_pool_servers_replaced", "Servers replaced", ("experiment",))
        self._servers = _metric("Gauge", "factory_pool_servers_ready", "Servers taking requests", ("experiment",))

    def retried(self, n: int) -> None:
        if n:
            self._retried.inc(n, tags=self.tags)

    def replaced(self) -> None:
        self._replaced.inc(1, tags=self.tags)

    def servers(self, n: int) -> None:
        self._servers.set(n, tags=self.tags)


class ClassMetrics:
    """The inference service's workload classes (tag `workload`)."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        keys = ("experiment", "workload")
        self._requests = _metric("Counter", "factory_inference_class_requests", "Requests served per workload class", keys)
        self._tokens = _metric("Counter", "factory_inference_class_tokens", "Tokens generated per workload class", keys)
        self._wait = _metric("Histogram", "factory_inference_class_wait_seconds", "Seconds a chunk waited for a server",
                             keys, boundaries=[0.01, 0.1, 0.5, 1, 5, 30, 120])
        self._queued = _metric("Gauge", "factory_inference_class_queued_seqs", "Sequences waiting per workload class", keys)
        self._held = _metric("Counter", "factory_inference_class_held_seq_seconds",
                             "Sequence-seconds held on servers per workload class (its rate over the capacity gauge "
                             "is the class's share)", keys)
        self._capacity = _metric("Gauge", "factory_inference_capacity_seqs", "Sequences the servers run at once",
                                 ("experiment",))

    def _tags(self, workload: str) -> dict[str, str]:
        return {"experiment": self.experiment, "workload": workload}

    def waited(self, workload: str, seconds: float) -> None:
        self._wait.observe(seconds, tags=self._tags(workload))

    def served(self, workload: str, requests: int, tokens: int) -> None:
        if requests:
            self._requests.inc(requests, tags=self._tags(workload))
        if tokens:
            self._tokens.inc(tokens, tags=self._tags(workload))

    def queued(self, workload: str, seqs: int) -> None:
        self._queued.set(seqs, tags=self._tags(workload))

    def held(self, workload: str, seq_seconds: float, capacity: int) -> None:
        if seq_seconds > 0:
            self._held.inc(seq_seconds, tags=self._tags(workload))
        self._capacity.set(capacity, tags={"experiment": self.experiment})


class EvalMetrics:
    """The Evaluator's scores per suite (tag `suite`), and regressions found."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._score = _metric("Gauge", "factory_eval_score", "Latest score per eval suite", ("experiment", "suite"))
        self._regressions = _metric("Counter", "factory_eval_regressions", "Eval regressions found",
                                    ("experiment", "suite"))

    def scored(self, suite: str, score: float, regression: bool) -> None:
        tags = {"experiment": self.experiment, "suite": suite}
        self._score.set(score, tags=tags)
        if regression:
            self._regressions.inc(1, tags=tags)


class SyntheticMetrics:
    """The SyntheticGenerator's quality figures per job (tag `job`)."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        keys = ("experiment", "job")
        self._samples = _metric("Counter", "factory_synthetic_samples", "Samples generated per synthetic job", keys)
        self._kept = _metric("Counter", "factory_synthetic_kept", "Samples kept and fed to the blend", keys)
        self._acceptance = _metric("Gauge", "factory_synthetic_acceptance", "Kept over generated, last batch", keys)
        self._diversity = _metric("Gauge", "factory_synthetic_diversity", "Distinct over generated, last batch", keys)
        self._length = _metric("Gauge", "factory_synthetic_mean_tokens", "Mean sample length, last batch", keys)

    def batch(self, job: str, samples: int, kept: int, acceptance: float, diversity: float, tokens: float) -> None:
        tags = {"experiment": self.experiment, "job": job}
        if samples:
            self._samples.inc(samples, tags=tags)
        if kept:
            self._kept.inc(kept, tags=tags)
        self._acceptance.set(acceptance, tags=tags)
        self._diversity.set(diversity, tags=tags)
        self._length.set(tokens, tags=tags)


class SandboxMetrics:
    def __init__(self, experiment: str):
        self.tags = {"experiment": experiment}
        keys = ("experiment",)
        self._queue = _metric("Gauge", "factory_sandbox_queue_depth", "Executions waiting", keys)
        self._done = _metric("Counter", "factory_sandbox_executions", "Executions finished, by status",
                             ("experiment", "status"))
        self._latency = _metric("Histogram", "factory_sandbox_latency_s", "Submit-to-result seconds", keys,
                                boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30])
        self._replaced = _metric("Counter", "factory_sandbox_workers_replaced", "Workers replaced", keys)
        self._workers = _metric("Gauge", "factory_sandbox_workers_ready", "Workers taking executions", keys)

    def queued(self, n: int) -> None:
        self._queue.set(n, tags=self.tags)

    def finished(self, status: str, latency_s: float) -> None:
        self._done.inc(1, tags={**self.tags, "status": status})
        self._latency.observe(latency_s, tags=self.tags)

    def replaced(self) -> None:
        self._replaced.inc(1, tags=self.tags)

    def workers(self, n: int) -> None:
        self._workers.set(n, tags=self.tags)



class BlenderMetrics:
    def __init__(self, blender: str):
        self.tags = {"blender": blender}
        self._tokens = _metric("Counter", "factory_blender_tokens", "Tokens served, by source (the realised mix)",
                               ("blender", "source"))
        self._drops = _metric("Counter", "factory_blender_dropped_documents", "Documents dropped, by reason",
                              ("blender", "reason"))
        self._step = _metric("Gauge", "factory_blender_served_step", "Last step served", ("blender",))
        self._buffer = _metric("Gauge", "factory_blender_prepared_steps", "Steps prepared and held", ("blender",))

    def served(self, manifest: dict) -> None:
        for source, tokens in manifest["tokens_by_source"].items():
            self._tokens.inc(tokens, tags={**self.tags, "source": source})
        for reason, count in manifest["drops"].items():
            self._drops.inc(count, tags={**self.tags, "reason": reason})
        self._step.set(manifest["step"], tags=self.tags)

    def prepared(self, steps: int) -> None:
        self._buffer.set(steps, tags=self.tags)


class RLMetrics:
    """The RL loop's figures (recorded by the driver, which Ray treats as a worker too)."""

    def __init__(self, experiment: str):
        self.tags = {"experiment": experiment}
        keys = ("experiment",)
        self._reward = _metric("Gauge", "factory_rl_reward", "Mean reward of the last step's rollouts", keys)
        self._staleness = _metric("Gauge", "factory_rl_staleness", "Largest staleness (versions) trained on", keys)
        self._version = _metric("Gauge", "factory_rl_trainer_version", "Version the trainers last published", keys)
        self._queue = _metric("Gauge", "factory_rl_rollout_queue_depth", "Scored groups waiting (async)", keys)
        self._used = _metric("Counter", "factory_rl_groups_used", "Rollout groups trained on", keys)
        self._dropped = _metric("Counter", "factory_rl_groups_dropped", "Rollout groups dropped, by reason",
                                ("experiment", "reason"))

    def step(self, metrics: dict) -> None:
        self._reward.set(metrics["reward"], tags=self.tags)
        self._staleness.set(metrics["staleness_max"], tags=self.tags)
        self._version.set(metrics["version"], tags=self.tags)
        self._used.inc(metrics["groups"], tags=self.tags)

    def queue_depth(self, n: int) -> None:
        self._queue.set(n, tags=self.tags)

    def dropped(self, reason: str) -> None:
        self._dropped.inc(1, tags={**self.tags, "reason": reason})


class TrainerMetrics:
    def __init__(self, shard: str):
        self.tags = {"shard": shard}
        keys = ("shard",)
        self._loss = _metric("Gauge", "factory_trainer_loss", "Loss of the last step", keys)
        self._tokens_per_s = _metric("Gauge", "factory_trainer_tokens_per_s", "Tokens/s of the last step", keys)
        self._step = _metric("Gauge", "factory_trainer_step", "Steps taken", keys)
        self._tokens = _metric("Counter", "factory_trainer_tokens", "Tokens trained on", keys)

    def step(self, metrics: dict) -> None:
        self._loss.set(metrics["loss"], tags=self.tags)
        self._step.set(metrics["step"], tags=self.tags)
        if metrics.get("tokens"):
            self._tokens.inc(metrics["tokens"], tags=self.tags)
            self._tokens_per_s.set(metrics["tokens_per_s"], tags=self.tags)


class BroadcasterMetrics:
    def __init__(self, broadcaster: str):
        self.tags = {"broadcaster": broadcaster}
        keys = ("broadcaster",)
        self._version = _metric("Gauge", "factory_weights_published_version", "Newest version published", keys)
        self._seconds = _metric("Gauge", "factory_weights_publish_s", "Seconds the last publish took", keys)

    def published(self, version: int, seconds: float) -> None:
        self._version.set(version, tags=self.tags)
        self._seconds.set(seconds, tags=self.tags)


class PlaygroundMetrics:
    def __init__(self):
        keys = ("model", "version")
        self._requests = _metric("Counter", "factory_playground_requests", "Playground requests answered", keys)
        self._tokens = _metric("Counter", "factory_playground_tokens", "Tokens generated for the playground", keys)
        self._latency = _metric("Histogram", "factory_playground_latency_s", "Seconds per request", keys,
                                boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60])
        self._rate = _metric("Gauge", "factory_playground_tokens_per_s", "Tokens/s of the last request", keys)

    def record(self, model: str, result, elapsed: float) -> None:
        tags = {"model": model, "version": str(result.version)}
        tokens = len(result.completions[0].token_ids)
        self._requests.inc(1, tags=tags)
        if tokens:
            self._tokens.inc(tokens, tags=tags)
        if elapsed > 0:
            self._latency.observe(elapsed, tags=tags)
            self._rate.set(tokens / elapsed, tags=tags)


class SupervisionMetrics:
    """Faults noticed and recoveries made, per role; the seconds each recovery took."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        keys = ("experiment", "role", "kind")
        self._events = _metric("Counter", "factory_supervision_events", "Faults, decisions and recoveries", keys)
        self._seconds = _metric("Gauge", "factory_supervision_recovery_seconds", "Seconds the last recovery took",
                                ("experiment", "role"))

    def event(self, role: str, kind: str, seconds: float | None = None) -> None:
        self._events.inc(1, tags={"experiment": self.experiment, "role": role, "kind": kind})
        if seconds is not None:
            self._seconds.set(seconds, tags={"experiment": self.experiment, "role": role})
