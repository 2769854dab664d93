"""The driver lost (SIGKILL) or stopped (Ctrl-C) mid-run; `factory run --resume RUN_DIR` continues from
the newest checkpoint: every step exactly once in metrics.jsonl, the same documents and tasks per
step as a run that was never stopped (the blenders' provenance), and the same pre-training losses."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fault]
BIN = Path(sys.executable).parent
SETTINGS = ["train.total_steps=24", "rl.steps=6", "rl.eval_tasks=8", "rl.eval_samples=2", "train.checkpoint_every=3"]


def factory(*args, **kw):
    return subprocess.run([str(BIN / "factory"), *args], capture_output=True, text=True, timeout=900, **kw)


def start(tiny_model, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "factory"), "run", "default", f"model.path={tiny_model}",
                             f"experiment.run_dir={run_dir}", *SETTINGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(run_dir: Path, stage: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


def wait_for(run_dir: Path, stage: str, count: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(records(run_dir, stage)) < count:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {count} {stage} records"
        time.sleep(0.05)


def manifests(run_dir: Path, store: str) -> dict[int, str]:
    with sqlite3.connect(run_dir / f"{store}.sqlite") as db:
        return dict(db.execute("SELECT step, manifest FROM manifests"))


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    done = factory("run", "default", f"model.path={tiny_model}", f"experiment.run_dir={run_dir}", *SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert factory("status", str(run_dir)).stdout.strip() == "finished"
    return run_dir


def check_against(reference: Path, resumed: Path) -> None:
    ours, theirs = records(resumed, "pretrain"), records(reference, "pretrain")
    assert [r["step"] for r in ours] == list(range(1, 25)), "every pre-training step once"
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in theirs], abs=1e-6)
    assert [r["step"] for r in records(resumed, "rl")] == list(range(1, 7)), "every RL step once"
    assert manifests(resumed, "blender") == manifests(reference, "blender"), "the same documents per step"
    assert manifests(resumed, "tasks") == manifests(reference, "tasks"), "the same tasks per step"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["pretrain_steps"] == 24 and summary["rl_steps"] == 6
    assert summary["rl"] == json.loads((reference / "summary.json").read_text())["rl"], "every group counted once"
    assert factory("status", str(resumed)).stdout.strip() == "finished"


def test_resume_after_the_driver_is_killed_mid_pretraining(reference, tiny_model, tmp_path):
    proc = start(tiny_model, tmp_path)
    wait_for(tmp_path, "pretrain", 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    status = factory("status", str(tmp_path)).stdout.strip()
    assert status.startswith("lost: the driver is gone; resumable from pretrain-0000"), status
    done = factory("run", "--resume", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from pretrain-0000" in done.stdout
    check_against(reference, tmp_path)


def test_ctrl_c_in_rl_writes_a_checkpoint_and_resume_finishes(reference, tiny_model, tmp_path):
    proc = start(tiny_model, tmp_path)
    wait_for(tmp_path, "rl", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("factory: ")]
    assert len(said) == 1 and said[0].startswith("factory: stopped after rl step") and "--resume" in said[0], said
    status = factory("status", str(tmp_path)).stdout.strip()
    assert status.startswith("interrupted; resumable from rl-0000"), status
    done = factory("run", "--resume", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    check_against(reference, tmp_path)
