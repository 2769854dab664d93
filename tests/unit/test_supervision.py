"""The supervision logic without Ray: the policy's decisions, drawn fault drills, the event log,
and what a run directory's status and checkpoints say."""

import json
import os
import subprocess

import pytest

from runtime.core.config import load_config
from runtime.jobs.checkpoint import Progress, describe, latest, set_status, trim_metrics
from runtime.supervision.events import EventLog, read_events
from runtime.supervision.faults import drawn
from runtime.supervision.policy import Policy


def test_the_policy_replaces_until_a_role_has_used_its_replacements_then_fails():
    policy = Policy(max_replacements=2)
    assert [policy.decide("trainer", "x/trainer/1", "died").action for _ in range(3)] == ["replace", "replace", "fail"]
    assert policy.decide("inference", "x/inference/0", "hung").action == "replace", "counted per role"
    assert "replaced 2 times" in policy.decide("trainer", "x/trainer/0", "died").reason


def test_random_faults_are_drawn_from_the_seed_over_the_stages_that_run():
    cfg = load_config("default", ["faults.random=5", "faults.seed=3", "rl.steps=4", "train.total_steps=10",
                                  "faults.roles=[trainer, tasks]"])
    first, again = drawn(cfg), drawn(cfg)
    assert first == again and len(first) == 5
    assert all(k.role in ("trainer", "tasks") and k.stage in ("pretrain", "rl") for k in first)
    assert all(k.step < (10 if k.stage == "pretrain" else 4) for k in first)
    other = load_config("default", ["faults.random=5", "faults.seed=4", "rl.steps=4", "train.total_steps=10",
                                    "faults.roles=[trainer, tasks]"])
    assert drawn(other) != first


def test_a_fault_names_a_known_role():
    from runtime.core.errors import ConfigError

    with pytest.raises(ConfigError, match="faults.kills.0.role"):
        load_config("default", ["faults.kills=[{role: trainr, step: 1}]"])


def test_events_go_to_the_console_once_and_to_events_jsonl(tmp_path):
    said = []
    log = EventLog(tmp_path, "exp", say=said.append)
    log.record("lost", "trainer", "exp/trainer/1 died at step 3", actor="exp/trainer/1")
    log.record("replaced", "trainer", "exp/trainer/1 replaced in 1.2 s", seconds=1.23456)
    assert said == ["[factory] exp/trainer/1 died at step 3", "[factory] exp/trainer/1 replaced in 1.2 s"]
    rows = read_events(tmp_path)
    assert [r["kind"] for r in rows] == ["lost", "replaced"] and rows[1]["seconds"] == 1.235
    assert log.counts == {"lost": 1, "replaced": 1}


def test_the_console_says_each_event_once_whoever_wrote_it(tmp_path):
    from runtime.jobs.console import EventTail

    said, tailed = [], []
    log = EventLog(tmp_path, "exp", say=said.append)
    with EventTail(tmp_path, tailed.append, interval_s=0.05):
        log.record("injected", "service", "fault: SIGKILL to service 0 (pid 1234)", target_pid=1234, pid=1234)
        with (tmp_path / "events.jsonl").open("a") as f:  # an actor's row: another process wrote it
            f.write(json.dumps({"kind": "lost", "role": "inference", "message": "x/inference/0 died",
                                "pid": os.getpid() + 1}) + "\n")
    assert said == ["[factory] fault: SIGKILL to service 0 (pid 1234)"]
    assert tailed == ["x/inference/0 died"], "the driver's own row is not said twice"
    assert read_events(tmp_path)[0]["target_pid"] == 1234


def test_a_run_directory_says_finished_failed_interrupted_or_lost(tmp_path):
    set_status(tmp_path, "finished")
    assert describe(tmp_path) == "finished"
    set_status(tmp_path, "failed", error="boom")
    assert describe(tmp_path) == "failed: boom"
    gone = subprocess.Popen(["true"])
    gone.wait()
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({**status, "state": "running", "pid": gone.pid}))
    assert describe(tmp_path) == "lost: the driver is gone"
    (tmp_path / "status.json").write_text(json.dumps({**status, "state": "running", "pid": os.getpid()}))
    assert describe(tmp_path).startswith("running (driver pid")


def test_only_a_complete_checkpoint_counts_and_metrics_are_trimmed_to_it(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".writing-1-2").mkdir(parents=True)  # a driver killed while writing leaves this behind
    assert latest(tmp_path) is None
    (root / "rl-000004").mkdir()
    (root / "rl-000004" / "progress.json").write_text(json.dumps(
        {"progress": {**vars(Progress(stage="rl", step=4, version=5)), "metrics_lines": 2}, "blenders": {}}))
    (root / "latest").write_text("rl-000004")
    set_status(tmp_path, "interrupted")
    saved = latest(tmp_path)
    assert saved.progress.stage == "rl" and saved.progress.step == 4 and saved.progress.version == 5
    assert describe(tmp_path) == f"interrupted; resumable from rl-000004 (factory run --resume {tmp_path})"
    (tmp_path / "metrics.jsonl").write_text("a\nb\nc\nd\n")
    trim_metrics(tmp_path, saved.progress.metrics_lines)
    assert (tmp_path / "metrics.jsonl").read_text() == "a\nb\n"
