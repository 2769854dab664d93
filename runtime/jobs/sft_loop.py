"""The optional SFT stage: the task stream's reference solutions, loss on the solution only.

Each step takes the task blender's next step (the same stream RL continues from), trains every
shard on its share, and the stage ends by publishing one version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rl.tasks import AnswerTask
from runtime.core.config import FactoryConfig

if TYPE_CHECKING:
    from runtime.jobs.parts import RunParts


def run_sft(parts: RunParts, cfg: FactoryConfig, progress, record) -> tuple[list[dict[str, Any]], int]:
    """`sft.steps` steps on the task stream's next steps (from `progress.step` when resumed), then the
    next version to every server; (history, version)."""
    from runtime.jobs.console import progress_bar

    history, version = progress.history, progress.version + 1
    with progress_bar(range(progress.step, cfg.sft.steps), desc="sft", initial=progress.step, total=cfg.sft.steps) as bar:
        for step in bar:
            parts.drill("sft", step)
            examples = [{"prompt": t.prompt, "completion": reference(t)} for t in parts.task_stream.next()]
            history.append({"stage": "sft", **parts.trainers.sft_step(examples), "step": step + 1})
            record(history[-1])
            parts.step_done("sft", history)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    parts.trainers.publish(parts.broadcaster, version)
    return history, version


def reference(task) -> str:
    """What the model should write after the prompt: the canonical code, or the answer; one line."""
    return f" {task.answer}\n" if isinstance(task, AnswerTask) else task.solution + "\n"
