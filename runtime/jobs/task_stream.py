"""The driver's cursor over the task blender: SFT and RL take consecutive steps of one stream."""

from __future__ import annotations

from rl.tasks import AnswerTask, CodeTask, parse_line
from runtime.core.calls import wait
from runtime.core.config import FactoryConfig

Task = CodeTask | AnswerTask


class TaskStream:
    def __init__(self, blender, cfg: FactoryConfig):
        self.blender, self.timeout, self.step = blender, cfg.data.batch_timeout_s + cfg.cluster.call_margin_s, 0

    def next(self) -> list[Task]:
        batch = wait(self.blender.batch.remote(self.step), self.timeout, f"task blender: step {self.step}")
        self.step += 1
        return [parse_line(d["text"], f"task source {d['source']}, document {d['id']}") for d in batch["documents"]]
