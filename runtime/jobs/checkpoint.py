"""Checkpoints, the run's status file, and what `factory run --resume RUN_DIR` reads.

A checkpoint (every `train.checkpoint_every` steps of any stage, and once more when the driver is
told to stop by Ctrl-C or SIGTERM) is a directory RUN_DIR/checkpoints/<stage>-<step>:
`trainer.pt` (a shard's whole state: parameters, every stage's optimizer and schedule, step,
RNG) and `progress.json` (the stage and step, the newest version, the task cursor, both
blenders' snapshots at it, the RL accounting, the finished stages, the lines of metrics.jsonl
that belong to it). It is written under a temporary name and renamed, then named in
`checkpoints/latest` (also renamed into place): a driver killed while writing leaves the
previous checkpoint the latest. The newest two are kept.

RUN_DIR/status.json says whether the run is running (and the driver's pid and host),
finished, failed (and why) or interrupted; `factory status RUN_DIR` reads it, and a run whose
driver is gone without saying so is `lost`. Both `interrupted` and `lost` are resumable when a
checkpoint exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.core.errors import FactoryError, Interrupted

if TYPE_CHECKING:
    from runtime.jobs.parts import RunParts

STAGES = ("pretrain", "sft", "dpo", "rl")
KEEP = 2


@dataclass
class Progress:
    """Where the run is: what a checkpoint records and a resumed driver continues from."""

    stage: str = "pretrain"
    """The stage in progress (one of STAGES), or `done`."""
    step: int = 0
    """Steps of `stage` finished."""
    version: int = 0
    """The newest weight version published."""
    task_step: int = 0
    """Steps of the task stream consumed by finished steps (SFT and RL read it)."""
    rl_counts: dict[str, int] = field(default_factory=dict)
    """The RL accounting (produced, used, dropped) at the checkpoint."""
    stages: list[dict[str, Any]] = field(default_factory=list)
    """Rows of the finished stages, with their histories."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Records of `stage` so far."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics_lines: int = 0
    """Lines of metrics.jsonl up to this point (a resume drops the ones after)."""

    def next_stage(self, stage: str) -> None:
        self.stage, self.step, self.history = stage, 0, []


@dataclass
class Saved:
    path: Path
    progress: Progress
    blenders: dict[str, dict[str, Any]]

    def trainer_state(self) -> dict[str, Any]:
        import torch

        return torch.load(self.path / "trainer.pt", weights_only=False)


class Checkpoints:
    """Writes checkpoints when due, and on a stop request, from the loops' `step_done` calls."""

    def __init__(self, run_dir: Path, every: int, progress: Progress, tracker, say=print):
        self.root, self.every, self.progress, self.say = Path(run_dir) / "checkpoints", every, progress, say
        self.tracker = tracker
        self.stop_requested = threading.Event()
        self.parts: RunParts | None = None

    def step_done(self, stage: str, history: list[dict[str, Any]], version: int | None = None,
                  rl_counts: dict[str, int] | None = None, task_step: int | None = None) -> None:
        """A step of `stage` finished and was recorded: write a checkpoint if one is due, or if the
        driver was told to stop (then raise Interrupted)."""
        p = self.progress
        p.stage, p.step, p.history = stage, len(history), history
        p.version = version if version is not None else p.version
        p.rl_counts = rl_counts if rl_counts is not None else p.rl_counts
        p.task_step = task_step if task_step is not None else self.parts.task_stream.step
        p.metrics_lines = self.tracker.lines
        stopping = self.stop_requested.is_set()
        if stopping or (self.every and p.step % self.every == 0):
            path = self.write()
            if stopping:
                raise Interrupted(f"stopped after {stage} step {p.step}; checkpoint {path.name} written "
                                  f"(continue with: factory run --resume {self.root.parent})")

    def write(self) -> Path:
        import torch

        from runtime.core.calls import wait

        parts, p = self.parts, self.progress
        cfg = parts.cfg
        tmp = self.root / f".writing-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        torch.save(wait(parts.trainers.shards[0].state.remote(), cfg.train.save_timeout_s, "checkpoint: trainer state"),
                   tmp / "trainer.pt")
        blenders = {"blender": wait(parts.handle(parts.blender).state.remote(), cfg.data.batch_timeout_s,
                                    "checkpoint: blender state"),
                    "tasks": wait(parts.handle(parts.tasks).state.remote(p.task_step), cfg.data.batch_timeout_s,
                                  "checkpoint: task blender state")}
        (tmp / "progress.json").write_text(json.dumps({"progress": asdict(p), "blenders": blenders}))
        final = self.root / f"{p.stage}-{p.step:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_atomic(self.root / "latest", final.name)
        for old in sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def latest(run_dir: Path | str) -> Saved | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    data = json.loads((path / "progress.json").read_text())
    return Saved(path, Progress(**data["progress"]), data["blenders"])


def trim_metrics(run_dir: Path, lines: int) -> None:
    """Keep the first `lines` records of metrics.jsonl: those after the checkpoint are redone."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        kept = path.read_text().splitlines(keepends=True)[:lines]
        _write_atomic(path, "".join(kept))


# ---- the status file -------------------------------------------------------------


def set_status(run_dir: Path, state: str, **fields: Any) -> None:
    _write_atomic(Path(run_dir) / "status.json", json.dumps(
        {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(), **fields}))


def describe(run_dir: Path | str) -> str:
    """One line: running, finished, failed, interrupted or lost, and whether and how it resumes."""
    run_dir = Path(run_dir)
    path = run_dir / "status.json"
    if not path.is_file():
        raise FactoryError(f"{run_dir}: not a run directory (no status.json)")
    status = json.loads(path.read_text())
    state = status["state"]
    if state == "running" and status.get("host") == socket.gethostname() and not _alive(status["pid"]):
        state = "lost"
    saved = latest(run_dir)
    where = f"; resumable from {saved.path.name} (factory run --resume {run_dir})" if saved else ""
    if state == "running":
        return f"running (driver pid {status['pid']} on {status['host']})"
    if state == "finished":
        return "finished"
    if state == "failed":
        return f"failed: {status.get('error', '?')}{where}"
    return f"{state}: the driver is gone{where}" if state == "lost" else f"{state}{where}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def stop_requests(checkpoints: Checkpoints, say=print):
    """While the driver runs: the first Ctrl-C or SIGTERM asks the loops to checkpoint and stop at the
    end of the step; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if checkpoints.stop_requested.is_set():
            raise KeyboardInterrupt
        checkpoints.stop_requested.set()
        say(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint (again to stop now)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
