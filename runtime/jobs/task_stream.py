"""The driver's cursor over the task blender: SFT and RL take consecutive steps of one stream.

The blender is a supervised actor: when a call to it fails because it was lost, the supervisor
replaces it (restored from its snapshots) and the same step is asked for again, so no task is
skipped or used twice."""

from __future__ import annotations

from rl.tasks import AnswerTask, CodeTask, parse_line
from runtime.core.calls import wait
from runtime.core.config import FactoryConfig
from runtime.core.errors import CallTimeout, PeerLost

Task = CodeTask | AnswerTask


class TaskStream:
    def __init__(self, supervisor, name: str, cfg: FactoryConfig):
        self.supervisor, self.name = supervisor, name
        self.timeout, self.step = cfg.data.batch_timeout_s + cfg.cluster.call_margin_s, 0

    def next(self) -> list[Task]:
        batch = self._batch(self.step)
        self.step += 1
        return [parse_line(d["text"], f"task source {d['source']}, document {d['id']}") for d in batch["documents"]]

    def _batch(self, step: int) -> dict:
        while True:
            try:
                return wait(self.supervisor.handle(self.name).batch.remote(step), self.timeout,
                            f"task blender: step {step}")
            except (PeerLost, CallTimeout):
                if not self.supervisor.ensure(self.name, f"task step {step}"):
                    raise
