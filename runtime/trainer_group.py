"""TrainerGroup: the driver's handle on N TrainerShard actors stepping as one data-parallel model."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import ray

from actors.trainer_shard import TrainerShard
from runtime.cluster import actor_name
from runtime.config import FactoryConfig
from runtime.errors import SetupTimeout


class TrainerGroup:
    def __init__(self, cfg: FactoryConfig, model_path: Path | str):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.size = cfg.placement.trainer.replicas
        self.shards: list[Any] = []

    def start(self, resume_from: str | None = None) -> TrainerGroup:
        """Spawn the shards, rendezvous on a port rank 0 picks, load the model (or a saved state)."""
        placement = self.cfg.placement.trainer
        actor = ray.remote(TrainerShard)
        self.shards = [actor.options(name=actor_name(self.cfg.experiment.name, "trainer", rank),
                                     num_cpus=placement.num_cpus, num_gpus=placement.num_gpus)
                       .remote(self.cfg, self.model_path, rank, self.size, f"trainer/{rank}")
                       for rank in range(self.size)]
        timeout = self.cfg.train.group_timeout_s + 120
        init_method = ray.get(self.shards[0].rendezvous.remote(), timeout=timeout)
        try:
            ray.get([s.setup.remote(init_method, resume_from) for s in self.shards], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise SetupTimeout(f"trainer shards did not form their group within {timeout}s") from None
        return self

    def train_step(self, blender, step: int) -> dict[str, Any]:
        """Every shard trains on its part of `step`; returns the step's metrics over the group."""
        timeout = self.cfg.train.batch_timeout_s + self.cfg.train.group_timeout_s
        return merged(ray.get([s.train_on.remote(blender, step) for s in self.shards], timeout=timeout))

    def rl_step(self, experience: list[dict[str, Any]]) -> dict[str, Any]:
        """Rows i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("rl_step", experience)

    def sft_step(self, examples: list[dict[str, str]]) -> dict[str, Any]:
        """Examples i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("sft_step", examples)

    def _split(self, method: str, rows: list) -> dict[str, Any]:
        timeout = self.cfg.train.group_timeout_s + 120
        calls = [getattr(s, method).remote(rows[i :: self.size]) for i, s in enumerate(self.shards)]
        return merged(ray.get(calls, timeout=timeout))

    def publish(self, broadcaster, version: int) -> dict[str, int]:
        """Rank 0's weights as `version`: put once, reloaded in place by every server; their versions."""
        return ray.get(broadcaster.publish.remote(version, [self.weights_ref()]),
                       timeout=self.cfg.weights.publish_timeout_s)

    def weights_ref(self) -> Any:
        """One object-store copy of the current weights, from rank 0 (replicas are identical)."""
        return self.shards[0].weights.remote()

    def save(self, path: Path | str) -> str:
        return ray.get(self.shards[0].save.remote(str(path)), timeout=600)

    def shutdown(self) -> None:
        for shard in self.shards:
            try:
                ray.get(shard.shutdown.remote(), timeout=30)
            except ray.exceptions.RayError:  # a shard already dead is what shutdown wants
                pass
            ray.kill(shard)
        self.shards = []


def merged(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's figures over the group: rank 0's step, grad norm and lr (shared after the
    all-reduce), the mean loss and importance weight, the summed tokens and tokens/s."""
    out = {k: metrics[0][k] for k in ("step", "grad_norm", "lr") if k in metrics[0]}
    out.update({k: statistics.fmean(m[k] for m in metrics) for k in ("loss", "tis_weight") if k in metrics[0]})
    out.update({k: sum(m[k] for m in metrics) for k in ("tokens", "tokens_per_s")})
    return out
