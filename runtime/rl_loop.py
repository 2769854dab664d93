"""The synchronous RL stage: it reads as the algorithm.

    tasks -> InferencePool (n samples per task, with logprobs) -> sandbox code tests -> rewards
    -> group-normalised advantages -> TrainerShards (GRPO + truncated IS) -> broadcast version v+1
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import ray
import torch

from rl import procedural
from rl.grpo import group_advantages
from rl.rewards.code_tests import code_test_rewards
from rl.tasks import CodeTask
from runtime.config import FactoryConfig, SamplingConfig
from runtime.generation import GenerationRequest, GenerationResult, Workload


def sample(pool, tasks: list[CodeTask], cfg: FactoryConfig, n: int, workload: Workload) -> list[GenerationResult]:
    sampling = SamplingConfig(n=n, temperature=cfg.rl.temperature, max_tokens=cfg.rl.max_tokens, stop=["\n"])
    return pool.generate([GenerationRequest(prompt=t.prompt, sampling=sampling, workload=workload) for t in tasks])


def score(sandbox, tasks: list[CodeTask], results: list[GenerationResult]) -> torch.Tensor:
    """[tasks, n] 1.0 where the completion passes every test of its task."""
    pairs = [(t, c.text) for t, r in zip(tasks, results) for c in r.completions]
    rewards = code_test_rewards(sandbox, [t for t, _ in pairs], [c for _, c in pairs])
    return torch.tensor([float(r.passed) for r in rewards]).view(len(tasks), -1)


def pass_at_1(actors: dict[str, Any], cfg: FactoryConfig) -> float:
    """Mean success over `eval_samples` samples of each held-out task."""
    tasks = procedural.tasks(cfg.experiment.seed, cfg.rl.eval_tasks, prefix="eval")
    return score(actors["sandbox"], tasks, sample(actors["pool"], tasks, cfg, cfg.rl.eval_samples, Workload.EVAL)).mean().item()


def experience(results: list[GenerationResult], advantages: torch.Tensor) -> list[dict[str, Any]]:
    return [{"prompt_ids": r.prompt_token_ids, "completion_ids": c.token_ids, "logprobs": c.logprobs,
             "advantage": advantages[i, j].item()}
            for i, r in enumerate(results) for j, c in enumerate(r.completions)]


def rl_step(actors: dict[str, Any], cfg: FactoryConfig, step: int, version: int) -> dict[str, Any]:
    tasks = procedural.tasks(cfg.experiment.seed + 1 + step, cfg.rl.prompts_per_step, prefix=f"train{step}")
    results = sample(actors["pool"], tasks, cfg, cfg.rl.group_size, Workload.ROLLOUT)
    rewards = score(actors["sandbox"], tasks, results)
    metrics = actors["trainers"].rl_step(experience(results, group_advantages(rewards)))
    ray.get(actors["broadcaster"].publish.remote(version, [actors["trainers"].weights_ref()]), timeout=600)
    return {"stage": "rl", **metrics, "reward": rewards.mean().item(), "version": version,
            "rollout_versions": sorted({r.version for r in results})}


def run_rl(actors: dict[str, Any], cfg: FactoryConfig, run_dir: Path, first_version: int) -> list[dict[str, Any]]:
    """`rl.steps` synchronous steps; each publishes the next version (on-policy: staleness 0)."""
    from tqdm import tqdm

    history = []
    with open(run_dir / "metrics.jsonl", "a") as log, tqdm(range(cfg.rl.steps), desc="rl") as bar:
        for step in bar:
            metrics = rl_step(actors, cfg, step, first_version + step)
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            recent = statistics.fmean(h["reward"] for h in history[-5:])
            bar.set_postfix(reward=f"{recent:.2f}", loss=f"{metrics['loss']:.3f}")
    return history
