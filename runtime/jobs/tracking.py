"""Where a run's figures go: RUN_DIR/metrics.jsonl always; TensorBoard and MLflow when chosen.

Every record is one JSON object with a `stage` and a `step`; its numeric fields become
scalars named `<stage>/<field>` in the trackers, at the record's step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.core.errors import FactoryError


class Tracker:
    def __init__(self, run_dir: Path, trackers: list[str], experiment: str):
        path = run_dir / "metrics.jsonl"
        self.lines = len(path.read_text().splitlines()) if path.is_file() else 0
        """Records in metrics.jsonl (what a checkpoint notes, so a resume drops the later ones)."""
        self.jsonl = open(path, "a")
        self.sinks = [make_sink(kind, run_dir, experiment) for kind in trackers]

    def log(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        self.lines += 1
        scalars = scalars_of({k: v for k, v in record.items() if k != "step"}, record["stage"])
        for sink in self.sinks:
            sink.log(scalars, int(record.get("step", 0)))

    def close(self) -> None:
        self.jsonl.close()
        for sink in self.sinks:
            sink.close()


def scalars_of(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every number of `record`, nested dicts included (`rl/inference/eval/tokens_per_s`)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(scalars_of(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


def make_sink(kind: str, run_dir: Path, experiment: str):
    if kind == "tensorboard":
        return TensorBoardSink(run_dir / "tensorboard")
    if kind == "mlflow":
        return MlflowSink(run_dir, experiment)
    raise FactoryError(f"experiment.trackers: unknown tracker {kind!r} (known: tensorboard, mlflow)")


class TensorBoardSink:
    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    def __init__(self, run_dir: Path, experiment: str):
        try:
            import mlflow
        except ImportError:
            raise FactoryError("experiment.trackers: mlflow is chosen but not installed (pip install mlflow)") from None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").as_uri())
        mlflow.set_experiment(experiment)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_dir.name)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()
