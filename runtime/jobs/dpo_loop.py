"""The optional DPO stage: preference pairs from a file, the trainer shards' DPO step, one version.

Step k trains on pairs k*B .. k*B + B - 1 of the file (wrapping around), B = `dpo.pairs_per_step`,
split over the shards; the stage ends by publishing one version. The file is read, and every
line checked, before the first step.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rl.preferences import read_preference_pairs
from runtime.core.config import FactoryConfig
from runtime.core.errors import FactoryError

if TYPE_CHECKING:
    from runtime.jobs.parts import RunParts


def run_dpo(parts: RunParts, cfg: FactoryConfig, progress, record) -> tuple[list[dict[str, Any]], int]:
    """`dpo.steps` DPO steps (from `progress.step` when resumed), then the next version to every
    server; (history, version)."""
    from runtime.jobs.console import progress_bar

    pairs = [asdict(p) for p in read_preference_pairs(cfg.dpo.pairs)]
    if not pairs:
        raise FactoryError(f"dpo.pairs: {cfg.dpo.pairs} holds no preference pairs")
    size, history, version = cfg.dpo.pairs_per_step, progress.history, progress.version + 1
    with progress_bar(range(progress.step, cfg.dpo.steps), desc="dpo", initial=progress.step, total=cfg.dpo.steps) as bar:
        for step in bar:
            parts.drill("dpo", step)
            batch = [pairs[(step * size + i) % len(pairs)] for i in range(size)]
            history.append({"stage": "dpo", **parts.trainers.dpo_step(batch), "step": step + 1})
            record(history[-1])
            parts.step_done("dpo", history)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", margin=f"{history[-1]['margin']:.3f}")
    parts.trainers.publish(parts.broadcaster, version)
    return history, version
