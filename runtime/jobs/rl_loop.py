"""The RL stage: it reads as the algorithm.

    tasks (a blender of task documents) -> InferencePool: n samples per task, with logprobs
    -> SandboxPool: code tests -> rewards -> the algorithm's advantages (`rl.algorithm`)
    -> TrainerShards: its loss + truncated importance sampling -> WeightBroadcaster: version v+1

sync: those in turn, so every rollout comes from the version being trained (staleness 0).
async: a producer thread keeps up to `rl.queue_steps` steps of scored rollouts ready while the
trainers train and publish; the servers reload between requests, so a group is sampled from
whatever version they hold then. Groups more than `rl.max_staleness` versions behind the
trainer are dropped and counted (reason `stale`); groups still queued at the end are counted
as `unused`. Every group is either trained on or counted.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rl import procedural
from rl.algorithms import PolicyGradient, policy_gradient
from rl.scoring import answer_reward_of, score
from runtime.core.config import FactoryConfig, SamplingConfig
from runtime.core.errors import FactoryError
from runtime.core.generation import GenerationRequest, GenerationResult, Workload
from runtime.core.metrics import RLMetrics
from runtime.jobs.task_stream import Task
from runtime.pools.scheduling import class_rates

if TYPE_CHECKING:
    from runtime.jobs.parts import RunParts


@dataclass
class Group:
    """One task's completions, their rewards, and the version that sampled them."""

    task: Task
    result: GenerationResult
    rewards: torch.Tensor
    statuses: list[str]
    """Sandbox status per completion: a `sandbox_error` scored 0 is counted, not hidden."""

    @property
    def version(self) -> int:
        return self.result.version


def algorithm_of(cfg: FactoryConfig) -> PolicyGradient:
    rl = cfg.rl
    return policy_gradient(rl.algorithm, rl.clip_low, rl.clip_high, rl.kl_coef)


def run_rl(parts: RunParts, cfg: FactoryConfig, progress, record) -> tuple[list[dict[str, Any]], int]:
    """`rl.steps` steps (from `progress.step` when resumed), each publishing the next version;
    `record(metrics)` after each. Returns the history and the last version published."""
    from runtime.jobs.console import progress_bar

    ray_metrics = RLMetrics(cfg.experiment.name)
    algorithm = algorithm_of(cfg)
    counts = progress.rl_counts if progress.step else {}
    loop = SyncRollouts(parts, cfg, counts) if cfg.rl.mode == "sync" else AsyncRollouts(parts, cfg, ray_metrics, counts)
    history, version = progress.history, progress.version
    classes, logged = parts.pool.stats(), len(parts.eval_rows())  # rows of earlier stages are logged already
    try:
        with progress_bar(range(progress.step, cfg.rl.steps), desc=f"rl ({cfg.rl.mode}, {algorithm.name})",
                  initial=progress.step, total=cfg.rl.steps) as bar:
            for step in bar:
                parts.drill("rl", step)
                groups, waited = loop.take(version)
                metrics = train_and_publish(parts, cfg, groups, version + 1, algorithm)
                version += 1
                before, classes = classes, parts.pool.stats()
                history.append({"stage": "rl", **metrics, "step": step + 1, **loop.counts(), "wait_s": waited,
                                "inference": class_rates(before, classes)})
                record(history[-1])
                if cfg.eval.every and (step + 1) % cfg.eval.every == 0:
                    parts.evaluate(version)
                logged = log_evals(parts, record, step + 1, logged)
                parts.step_done("rl", history, version=version, **loop.position())
                ray_metrics.step(history[-1])
                bar.set_postfix(reward=f"{metrics['reward']:.2f}", stale=history[-1]["dropped_stale"])
    finally:
        loop.stop()
    if history:
        history[-1].update(loop.counts())
    log_evals(parts, record, len(history), logged, wait_s=cfg.eval.timeout_s if parts.evaluated else 0.0)
    return history, version


def log_evals(parts: RunParts, record, step: int, logged: int, wait_s: float = 0.0) -> int:
    """The Evaluator's new rows to the trackers at training step `step`; returns how many are logged."""
    rows = parts.eval_rows(logged, wait_s)
    for row in rows:
        record({"stage": "evaluator", "step": step, **{k: v for k, v in row.items() if k != "regression"},
                "regression": "regression" in row})
    return logged + len(rows)


def train_and_publish(parts: RunParts, cfg: FactoryConfig, groups: list[Group], version: int,
                      algorithm: PolicyGradient) -> dict[str, Any]:
    """One `algorithm` step on `groups`, then `version` to every server."""
    started = time.perf_counter()
    rewards = torch.stack([g.rewards for g in groups])
    advantages = algorithm.advantages(rewards)
    metrics = parts.trainers.rl_step(experience(groups, advantages), algorithm)
    trained = time.perf_counter()
    parts.trainers.publish(parts.broadcaster, version)
    staleness = [version - 1 - g.version for g in groups]
    tokens = sum(len(c.token_ids) for g in groups for c in g.result.completions)
    return {**metrics, "version": version, "groups": len(groups), "reward": rewards.mean().item(),
            "solved_groups": int((rewards.max(dim=1).values > 0).sum()),
            "staleness_max": max(staleness), "staleness_mean": sum(staleness) / len(staleness),
            "rollout_versions": sorted({g.version for g in groups}), "rollout_tokens": tokens,
            "completions_by_status": dict(collections.Counter(st for g in groups for st in g.statuses)),
            "train_s": time.perf_counter() - started, "update_s": trained - started,
            "publish_s": time.perf_counter() - trained}


def experience(groups: list[Group], advantages: torch.Tensor) -> list[dict[str, Any]]:
    return [{"prompt_ids": g.result.prompt_token_ids, "completion_ids": c.token_ids, "logprobs": c.logprobs,
             "advantage": advantages[i, j].item()}
            for i, g in enumerate(groups) for j, c in enumerate(g.result.completions)]


# ---- producing rollouts ----------------------------------------------------


def collect(parts: RunParts, cfg: FactoryConfig, sampling: SamplingConfig | None = None,
            phases: dict[str, float] | None = None) -> list[Group]:
    """The task stream's next step, sampled `group_size` times per task and scored in the sandbox.

    The tasks go in `rl.rollout_chunks` chunks: the sandbox pool scores a chunk while the
    inference pool samples the next, so neither waits for the whole step. `phases` gets the
    seconds spent sampling (`sample_s`) and then waiting for the last scores (`score_wait_s`)."""
    phases = {} if phases is None else phases
    started = time.perf_counter()
    tasks = parts.task_stream.next()
    seeds = request_seeds(cfg, parts.task_stream.step - 1, len(tasks))
    size = -(-len(tasks) // cfg.rl.rollout_chunks)
    scoring = []
    with ThreadPoolExecutor(1, thread_name_prefix="scorer") as scorer:
        for first in range(0, len(tasks), size):
            chunk = tasks[first : first + size]
            results = sample(parts.pool, chunk, cfg, cfg.rl.group_size, Workload.ROLLOUT, sampling,
                             seeds[first : first + size])
            scoring.append((chunk, results, scorer.submit(score, parts.sandbox, chunk, results,
                                                          answer_reward_of(cfg.rl.reward))))
        sampled = time.perf_counter()
        groups = []
        for chunk, results, scored in scoring:
            rewards, statuses = scored.result(timeout=cfg.inference.request_timeout_s)
            groups += [Group(t, r, rw, st) for t, r, rw, st in zip(chunk, results, rewards, statuses)]
    phases["sample_s"] = sampled - started
    phases["score_wait_s"] = time.perf_counter() - sampled
    return groups


def sample(pool, tasks: list[Task], cfg: FactoryConfig, n: int, workload: Workload,
           sampling: SamplingConfig | None = None, seeds: list[int | None] | None = None) -> list[GenerationResult]:
    """n completions per task; by default one line each (the returned expression), at rl.temperature.
    With `seeds`, task i's request samples with seeds[i] (vLLM gives its k-th sample seeds[i] + k)."""
    sampling = sampling or SamplingConfig(n=n, temperature=cfg.rl.temperature, max_tokens=cfg.rl.max_tokens, stop=["\n"])
    seeds = seeds or [sampling.seed] * len(tasks)
    return pool.generate([GenerationRequest(prompt=t.prompt, sampling=sampling.model_copy(update={"seed": seed}),
                                            workload=workload) for t, seed in zip(tasks, seeds)])


def request_seeds(cfg: FactoryConfig, step: int, count: int) -> list[int | None]:
    """Sampling seeds of one step's requests, from (experiment.seed, step, task); None when not `rl.seeded`.
    Spaced 2^10 apart: vLLM seeds a request's samples seed, seed + 1, ..."""
    if not cfg.rl.seeded:
        return [None] * count
    return [(zlib.crc32(f"{cfg.experiment.seed}/{step}".encode()) % 2**20 * 1024 + task * 1024) % 2**31
            for task in range(count)]


def pass_at_1(parts: RunParts, cfg: FactoryConfig) -> float:
    """Mean success over `eval_samples` samples of each held-out task (a task family the
    training stream draws with another seed)."""
    tasks = procedural.tasks(cfg.experiment.seed, cfg.rl.eval_tasks, prefix="eval")
    results = sample(parts.pool, tasks, cfg, cfg.rl.eval_samples, Workload.EVAL,
                     seeds=request_seeds(cfg, -1, len(tasks)))
    return score(parts.sandbox, tasks, results)[0].mean().item()


class SyncRollouts:
    """Generate the step's rollouts when the trainer asks for them: always the current version."""

    def __init__(self, parts: RunParts, cfg: FactoryConfig, counts: dict[str, int]):
        self.parts, self.cfg = parts, cfg
        self.used = counts.get("groups_used", 0)

    def take(self, version: int) -> tuple[list[Group], float]:
        started = time.perf_counter()
        groups = collect(self.parts, self.cfg)
        self.used += len(groups)
        return groups, time.perf_counter() - started

    def counts(self) -> dict[str, int]:
        return {"groups_produced": self.used, "groups_used": self.used, "dropped_stale": 0, "dropped_unused": 0}

    def position(self) -> dict[str, Any]:
        """What a checkpoint records: the accounting, and the task cursor (every step taken was used)."""
        return {"rl_counts": self.counts(), "task_step": self.parts.task_stream.step}

    def stop(self) -> None:
        pass


class AsyncRollouts:
    """A producer thread fills a bounded queue of scored groups; `take` drops the stale ones."""

    def __init__(self, parts: RunParts, cfg: FactoryConfig, metrics: RLMetrics, counts: dict[str, int]):
        """`counts` (a checkpoint's): the accounting to continue, and `skip`, the groups of the first
        task step that were already consumed before it."""
        self.parts, self.cfg, self.metrics = parts, cfg, metrics
        self.queue: queue.Queue[Group] = queue.Queue(cfg.rl.queue_steps * cfg.rl.prompts_per_step)
        self.error: BaseException | None = None
        self.dropped: collections.Counter[str] = collections.Counter(
            {"stale": counts.get("dropped_stale", 0), "unused": counts.get("dropped_unused", 0)})
        self.dropped_lock = threading.Lock()  # the producer and stop() both count `unused`
        self.used = counts.get("groups_used", 0)
        self.produced = self.used + self.dropped["stale"]  # groups queued at the checkpoint are produced again
        self.skip = counts.get("skip", 0)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="rollout-producer", daemon=True)
        self.thread.start()

    def take(self, version: int) -> tuple[list[Group], float]:
        """`prompts_per_step` groups at most `max_staleness` versions behind `version`."""
        started, groups = time.perf_counter(), []
        while len(groups) < self.cfg.rl.prompts_per_step:
            group = self._next()
            if version - group.version > self.cfg.rl.max_staleness:
                self._drop("stale")
                continue
            groups.append(group)
        self.used += len(groups)
        self.metrics.queue_depth(self.queue.qsize())
        return groups, time.perf_counter() - started

    def counts(self) -> dict[str, int]:
        return {"groups_produced": self.produced, "groups_used": self.used, "dropped_stale": self.dropped["stale"],
                "dropped_unused": self.dropped["unused"]}

    def position(self) -> dict[str, Any]:
        """What a checkpoint records: the accounting, and the task cursor of the first group not yet
        taken (groups are taken in the order produced, `prompts_per_step` per task step)."""
        consumed = self.used + self.dropped["stale"]
        per_step = self.cfg.rl.prompts_per_step
        return {"rl_counts": {**self.counts(), "skip": consumed % per_step}, "task_step": consumed // per_step}

    def stop(self) -> None:
        """Stop producing; groups made and never trained on are counted as `unused`."""
        self.stopping.set()
        while self.thread.is_alive():
            self._drain()
            self.thread.join(timeout=0.1)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return
            self._drop("unused")

    def _drop(self, reason: str) -> None:
        with self.dropped_lock:
            self.dropped[reason] += 1
        self.metrics.dropped(reason)

    def _next(self) -> Group:
        timeout = self.cfg.inference.request_timeout_s + self.cfg.data.batch_timeout_s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise FactoryError(f"async RL: the rollout producer failed: {self.error!r}") from self.error
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
        raise FactoryError(f"async RL: no rollouts within {timeout}s (inference.request_timeout_s + data.batch_timeout_s)")

    def _produce(self) -> None:
        try:
            while not self.stopping.is_set():
                groups = collect(self.parts, self.cfg)[self.skip:]
                self.skip = 0
                self.produced += len(groups)
                for group in groups:
                    self._put(group)
        except BaseException as exc:  # handed to the trainer side, which raises it with its cause
            self.error = exc

    def _put(self, group: Group) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(group, timeout=0.1)
                return
            except queue.Full:
                continue
        self._drop("unused")
