"""The main job through `factory run`, with one actor of every role SIGKILLed along the way (the
`faults:` drill; in sync mode every role twice: idle during pre-training, and busy in RL; the
inference service and the Evaluator once, in RL): the run
finishes with exit 0, every loss is recorded and recovered in
RUN_DIR/events.jsonl, and the RL counts add up (every group trained on or counted as dropped).
In sync mode (seeded sampling) the run ends with the very weights of the same run without faults."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fault]
BIN = Path(sys.executable).parent

SYNC_KILLS = ("[{role: trainer, index: 1, stage: pretrain, step: 4, delay_s: 0.05},"
              " {role: blender, stage: pretrain, step: 7},"
              " {role: inference, index: 1, stage: pretrain, step: 10},"
              " {role: sandbox, index: 1, stage: pretrain, step: 20},"
              " {role: tasks, stage: pretrain, step: 30},"
              " {role: broadcaster, stage: pretrain, step: 40},"
              " {role: inference, index: 0, stage: rl, step: 1, delay_s: 0.3},"
              " {role: broadcaster, stage: rl, step: 2, delay_s: 0.2},"
              " {role: tasks, stage: rl, step: 3},"
              " {role: sandbox, index: 0, stage: rl, step: 4, delay_s: 0.5},"
              " {role: trainer, index: 0, stage: rl, step: 5, delay_s: 0.5},"
              " {role: evaluator, stage: rl, step: 5, delay_s: 0.5},"
              " {role: service, stage: rl, step: 6, delay_s: 0.3}]")
ASYNC_KILLS = ("[{role: inference, index: 1, stage: rl, step: 1, delay_s: 0.2},"
               " {role: trainer, index: 1, stage: rl, step: 3, delay_s: 0.3},"
               " {role: broadcaster, stage: rl, step: 4}]")


def run_with_faults(tiny_model, run_dir: Path, mode: str, kills: str | None) -> subprocess.CompletedProcess:
    args = [str(BIN / "factory"), "run", "default", f"model.path={tiny_model}", f"experiment.run_dir={run_dir}",
            f"experiment.name=test-faults-{mode}", "train.total_steps=60", "rl.steps=8", f"rl.mode={mode}",
            "rl.eval_tasks=8", "rl.eval_samples=2", "supervision.health_timeout_s=3",
            *([f"faults.kills={kills}"] if kills else [])]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def final_weights(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "versions" / "v9" / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fault_free(tiny_model, tmp_path_factory):
    """The same sync run without faults: what the faulty one must end with."""
    run_dir = tmp_path_factory.mktemp("fault-free")
    done = run_with_faults(tiny_model, run_dir, "sync", None)
    assert done.returncode == 0, done.stderr[-3000:]
    rewards = [json.loads(line)["reward"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["stage"] == "rl"]
    assert any(rewards), "RL must learn something, or equal weights prove nothing"
    (run_dir / "console.txt").write_text(done.stdout + done.stderr)
    return run_dir


def test_the_main_jobs_console_is_short_and_the_actors_output_is_in_the_run_dir(fault_free):
    console = (fault_free / "console.txt").read_text()
    assert len(console.splitlines()) < 40, console
    assert "resolved config" not in console and "WARNING" not in console and "Traceback" not in console, console
    logs = {p.name for p in (fault_free / "logs").iterdir()}
    assert {"test-faults-sync.inference.0.err", "test-faults-sync.trainer.0.err"} <= logs, logs
    assert "vllm" in ((fault_free / "logs" / "test-faults-sync.inference.0.err").read_text() + \
        (fault_free / "logs" / "test-faults-sync.inference.0.out").read_text()).lower()


def test_a_finished_run_directory_is_whole_when_copied(fault_free, tmp_path):
    import shutil
    import sqlite3

    copy = Path(shutil.copytree(fault_free, tmp_path / "copy", symlinks=True))
    assert not (copy / "versions" / "v0").is_symlink() and (copy / "versions" / "v0" / "config.json").is_file()
    assert not list(copy.glob("*.sqlite-wal")), "the write-ahead logs are folded into the .sqlite files"
    steps = sqlite3.connect(copy / "blender.sqlite").execute("SELECT COUNT(DISTINCT step) FROM documents").fetchone()[0]
    assert steps >= 60, "every pre-training step's documents are in the file alone"


@pytest.mark.parametrize("mode,kills,roles", [
    ("sync", SYNC_KILLS, {"trainer": 2, "blender": 1, "inference": 2, "broadcaster": 2, "tasks": 2, "sandbox": 2,
                          "evaluator": 1, "service": 1}),
    ("async", ASYNC_KILLS, {"inference": 1, "trainer": 1, "broadcaster": 1}),
])
def test_the_main_job_survives_a_kill_of_every_role(fault_free, tiny_model, tmp_path, mode, kills, roles):
    done = run_with_faults(tiny_model, tmp_path, mode, kills)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    injected = [e for e in events if e["kind"] == "injected"]
    assert len(injected) == kills.count("role:") and all("target_pid" in e for e in injected), injected
    recovered = {}  # a lost trainer is carried by its peer (resized) or replaced by a warm spare
    for e in events:
        if e["kind"] in ("replaced", "resized"):
            recovered[e["role"]] = recovered.get(e["role"], 0) + 1
    assert recovered == roles, events
    shown = [e["message"] for e in events if e["kind"] in ("lost", "replaced", "resized") and e["message"] not in done.stdout]
    assert not shown, f"every actor's events reach the driver's console (from events.jsonl): {shown}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    rl = summary["rl"]
    assert summary["rl_steps"] == 8
    assert rl["groups_produced"] == rl["groups_used"] + rl["dropped_stale"] + rl["dropped_unused"], rl
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["stage"] == "pretrain"] == list(range(1, 61))
    assert [m["version"] for m in metrics if m["stage"] == "rl"] == list(range(2, 10))
    if mode == "sync":  # seeded sampling: the faults change nothing the run computes
        assert final_weights(tmp_path) == final_weights(fault_free)
        # the Evaluator (every 5 versions) lost its evaluation of v6 with it: counted, not hidden
        assert summary["evals"]["missed"] + [v for v, _ in summary["evals"]["curves"].get("held-out", [])] == [6]
