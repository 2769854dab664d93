"""TrainerGroup: the driver's handle on N TrainerShard actors stepping as one data-parallel model."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import ray

from actors.trainer_shard import TrainerShard
from runtime.core.cluster import actor_name
from runtime.core.config import FactoryConfig
from runtime.core.calls import setup_all, wait
from runtime.core.errors import CallTimeout, PeerLost


class TrainerGroup:
    def __init__(self, cfg: FactoryConfig, model_path: Path | str):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.size = cfg.placement.trainer.replicas
        self.shards: list[Any] = []

    def start(self, resume_from: str | None = None) -> TrainerGroup:
        """Spawn the shards, rendezvous on a port rank 0 picks, load the model (or a saved state)."""
        placement, train = self.cfg.placement.trainer, self.cfg.train
        actor = ray.remote(TrainerShard)
        names = [actor_name(self.cfg.experiment.name, "trainer", rank) for rank in range(self.size)]
        self.shards = [actor.options(name=name, num_cpus=placement.num_cpus, num_gpus=placement.num_gpus)
                       .remote(train, self.model_path, rank, self.size, f"trainer/{rank}")
                       for rank, name in enumerate(names)]
        init_method = wait(self.shards[0].rendezvous.remote(), train.setup_timeout_s, f"{names[0]}: rendezvous")
        setup_all(dict(zip(names, self.shards)), train.setup_timeout_s, "train.setup_timeout_s", init_method, resume_from)
        return self

    def train_step(self, blender, step: int) -> dict[str, Any]:
        """Every shard trains on its part of `step`; returns the step's metrics over the group."""
        timeout = self.cfg.train.batch_timeout_s + self.cfg.train.group_timeout_s
        return merged(wait([s.train_on.remote(blender, step) for s in self.shards], timeout, f"pre-training step {step}"))

    def rl_step(self, experience: list[dict[str, Any]], algorithm) -> dict[str, Any]:
        """Rows i, i + n, ... go to shard i (the config makes them split evenly); `algorithm`'s loss."""
        return self._split("rl_step", experience, algorithm, self.cfg.rl)

    def sft_step(self, examples: list[dict[str, str]]) -> dict[str, Any]:
        """Examples i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("sft_step", examples, self.cfg.sft)

    def dpo_step(self, pairs: list[dict[str, str]]) -> dict[str, Any]:
        """Pairs i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("dpo_step", pairs, self.cfg.dpo)

    def _split(self, method: str, rows: list, *args: Any) -> dict[str, Any]:
        calls = [getattr(s, method).remote(rows[i :: self.size], *args) for i, s in enumerate(self.shards)]
        return merged(wait(calls, self.cfg.train.step_timeout_s, f"trainer shards: {method}"))

    def publish(self, broadcaster, version: int) -> dict[str, int]:
        """Rank 0's weights as `version`: put once, reloaded in place by every server; their versions."""
        return wait(broadcaster.publish.remote(version, [self.weights_ref()]), self.cfg.weights.publish_timeout_s,
                    f"publish version {version}")

    def weights_ref(self) -> Any:
        """One object-store copy of the current weights, from rank 0 (replicas are identical)."""
        return self.shards[0].weights.remote()

    def save(self, path: Path | str) -> str:
        return wait(self.shards[0].save.remote(str(path)), self.cfg.train.save_timeout_s, f"save {path}")

    def shutdown(self) -> None:
        for shard in self.shards:
            try:
                wait(shard.shutdown.remote(), self.cfg.cluster.shutdown_timeout_s, "trainer shard: shutdown")
            except (CallTimeout, PeerLost):  # a shard already dead or stuck is what the kill below ends
                pass
            ray.kill(shard)
        self.shards = []


def merged(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's figures over the group: rank 0's step, grad norm and lr (shared after the
    all-reduce), the mean loss and importance weight, the summed tokens and tokens/s."""
    out = {k: metrics[0][k] for k in ("step", "grad_norm", "lr") if k in metrics[0]}
    out.update({k: statistics.fmean(m[k] for m in metrics) for k in ("loss", "tis_weight", "margin", "accuracy")
                if k in metrics[0]})
    out.update({k: sum(m[k] for m in metrics) for k in ("tokens", "tokens_per_s")})
    return out
