"""One record per fault, decision and recovery: a plain line on the console, a Ray metric, and a
row of RUN_DIR/events.jsonl (what `factory status` and the fault tests read)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from runtime.core.metrics import SupervisionMetrics


class EventLog:
    def __init__(self, run_dir: Path | str | None, experiment: str, say=print):
        self.path = Path(run_dir) / "events.jsonl" if run_dir else None
        self.metrics = SupervisionMetrics(experiment)
        self.say = say
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, role: str, message: str, seconds: float | None = None, **fields: Any) -> None:
        """`kind`: lost, hung, replaced, resized (a trainer group going on smaller), joined (a
        replacement joining a smaller group), scaled (the inference service added or removed a server),
        restored, republished, injected, failed."""
        # pid: the writer's, never a field's (the console skips its own process's rows: already said)
        row = {"time": time.time(), "kind": kind, "role": role, "message": message, **fields, "pid": os.getpid()}
        if seconds is not None:
            row["seconds"] = round(seconds, 3)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        self.metrics.event(role, kind, seconds)
        self.say(f"[factory] {message}")


def read_events(run_dir: Path | str) -> list[dict[str, Any]]:
    path = Path(run_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
