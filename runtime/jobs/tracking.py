"""Where a run's figures go: RUN_DIR/metrics.jsonl always; Weights & Biases, TensorBoard and
MLflow when chosen (`experiment.trackers`; `pip install 'model-factory[trackers]'`).

Every record is one JSON object with a `stage` and a `step` (within its stage); its numeric
fields become scalars named `<stage>/<field>` in the trackers, at the run's global training
step: the steps of the training stages before it plus its own, and for an evaluation the
steps trained so far. So pass@1 after pre-training sits at the last pre-training step, and
W&B, which wants steps that only grow, takes every stage.
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
        earlier = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        self.lines = len(earlier)
        """Records in metrics.jsonl (what a checkpoint notes, so a resume drops the later ones)."""
        self._offset, self._stage, self._steps = 0, None, 0
        for record in earlier:  # a resumed run goes on counting global steps where it stopped
            self.global_step(record)
        self.jsonl = open(path, "a")
        self.sinks = [make_sink(kind, run_dir, experiment) for kind in trackers]

    def log(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        self.lines += 1
        step = self.global_step(record)
        scalars = scalars_of({k: v for k, v in record.items() if k != "step"}, record["stage"])
        for sink in self.sinks:
            sink.log(scalars, step)

    def global_step(self, record: dict[str, Any]) -> int:
        """The record's step over the whole run (see the module docstring)."""
        stage, step = record["stage"], int(record.get("step", 0))
        if stage not in TRAINING_STAGES:
            return self._offset + self._steps
        if stage != self._stage:
            self._offset, self._stage, self._steps = self._offset + self._steps, stage, 0
        self._steps = max(self._steps, step)
        return self._offset + step

    def close(self) -> None:
        self.jsonl.close()
        for sink in self.sinks:
            sink.close()


TRAINING_STAGES = ("pretrain", "sft", "dpo", "rl")


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
    if kind == "wandb":
        return WandbSink(run_dir, experiment)
    if kind == "tensorboard":
        return TensorBoardSink(run_dir / "tensorboard")
    if kind == "mlflow":
        return MlflowSink(run_dir, experiment)
    raise FactoryError(f"experiment.trackers: unknown tracker {kind!r} (known: wandb, tensorboard, mlflow)")


def _needs(module: str, tracker: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FactoryError(f"experiment.trackers: {tracker} is chosen but not installed "
                           f"(pip install {module}, or the project's [trackers] extra)") from None


class WandbSink:
    """A W&B run in RUN_DIR/wandb, offline unless WANDB_MODE says otherwise (`wandb sync
    RUN_DIR/wandb/offline-run-*` uploads it later); the config is the run's resolved tree."""

    def __init__(self, run_dir: Path, experiment: str):
        wandb = _needs("wandb", "wandb")
        config_path = run_dir / "config.yaml"
        config = _yaml(config_path) if config_path.is_file() else {}
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "model-factory"), group=experiment,
                              name=run_dir.name, dir=str(run_dir), config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() only asks wandb-core to close the run's stream; its transaction log keeps the
        # last block in memory until then. teardown() waits for the service to exit, so the run
        # directory is complete when the job ends (for `wandb sync`, or a reader in this process).
        wandb.teardown()


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


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
        mlflow = _needs("mlflow", "mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # files in the run directory, which copies whole
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17+ asks for this opt-in
            mlflow.set_tracking_uri((run_dir / "mlruns").as_uri())
        mlflow.set_experiment(experiment)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_dir.name)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()
