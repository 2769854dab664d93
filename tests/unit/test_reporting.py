"""The end of a run: the stage table, the plot, and the trackers beside metrics.jsonl."""

import json
import struct

import pytest

from runtime.core.errors import FactoryError
from runtime.jobs.report import plot, table
from runtime.jobs.tracking import Tracker

STAGES = [{"stage": "pretrain", "steps": 150, "pass_at_1": 0.148, "tokens_per_s": 23876.4, "wall_s": 14.1},
          {"stage": "rl", "steps": 30, "pass_at_1": 0.273, "tokens_per_s": None, "wall_s": 43.7}]
RECORDS = ([{"stage": "pretrain", "step": i + 1, "loss": 6.0 / (i + 1)} for i in range(5)]
           + [{"stage": "rl", "step": i + 1, "loss": 0.01, "reward": 0.1 * i} for i in range(3)])


def test_table_has_a_row_per_stage():
    lines = table(STAGES).splitlines()
    assert lines[0].split() == ["stage", "steps", "pass@1", "tokens/s", "wall", "s"]
    assert lines[2].split() == ["pretrain", "150", "0.148", "23876", "14.1"]
    assert lines[3].split() == ["rl", "30", "0.273", "-", "43.7"]


def test_plot_has_a_loss_panel_per_stage_then_reward_and_pass_at_1(tmp_path):
    data = plot(RECORDS, STAGES, tmp_path / "plot.png", {"held-out": [[6, 0.1], [11, 0.2]]}).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (int(4.5 * 4 * 80), 4 * 80), "pretrain loss, rl loss, reward, pass@1"


def test_tracker_writes_jsonl_and_tensorboard_events(tmp_path):
    from tensorboardX.proto import event_pb2

    tracker = Tracker(tmp_path, ["tensorboard"], "test")
    for record in RECORDS:
        tracker.log(record)
    tracker.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == RECORDS
    [events] = (tmp_path / "tensorboard").iterdir()
    scalars = {(v.tag, e.step): v.simple_value for e in read_events(events, event_pb2) for v in e.summary.value}
    assert scalars[("pretrain/loss", 2)] == pytest.approx(3.0)
    assert scalars[("rl/reward", 5 + 3)] == pytest.approx(0.2), "at the run's step: 5 pre-training steps, then RL's 3rd"


def test_evaluations_are_logged_at_the_training_step_they_follow(tmp_path):
    tracker = Tracker(tmp_path, [], "test")
    steps = [tracker.global_step(r) for r in [*RECORDS[:5], {"stage": "eval", "after": "pretrain", "step": 0},
                                              *RECORDS[5:], {"stage": "evaluator", "step": 2}]]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 8]
    tracker.log(RECORDS[0])
    tracker.close()
    assert Tracker(tmp_path, [], "test").global_step(RECORDS[5]) == 1 + 1, "a resumed run counts from its metrics.jsonl"


def test_wandb_runs_offline_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "config.yaml").write_text("experiment: {name: test}\n")
    tracker = Tracker(tmp_path, ["wandb"], "test")
    for record in RECORDS:
        tracker.log(record)
    tracker.close()
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    history = next(run.glob("run-*.wandb"))
    assert history.stat().st_size > 0
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in wandb_records(history):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    assert [(r["_step"], r.get("rl/reward")) for r in rows if "rl/reward" in r] == [(6, 0.0), (7, 0.1), (8, 0.2)]


def test_mlflow_logs_to_the_run_directory(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path, ["mlflow"], "test")
    for record in RECORDS:
        tracker.log(record)
    tracker.close()
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "rl.reward")] == \
        [(6, 0.0), (7, 0.1), (8, 0.2)]


def test_a_tracker_that_is_not_installed_is_named(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(FactoryError, match=r"experiment.trackers: mlflow is chosen but not installed"):
        Tracker(tmp_path, ["mlflow"], "test")


def wandb_records(path):
    """W&B's transaction log: a 7-byte header, then LevelDB-log records (crc 4, length 2, type 1; 1 is
    a whole record, 2..4 first, middle, last pieces) in 32 KiB blocks."""
    data, at, whole, records = path.read_bytes(), 7, b"", []
    while at + 7 <= len(data):
        if 32768 - at % 32768 < 7:
            at += 32768 - at % 32768
            continue
        length, kind = struct.unpack("<HB", data[at + 4 : at + 7])
        whole, at = whole + data[at + 7 : at + 7 + length], at + 7 + length
        if kind in (1, 4):
            records.append(whole)
            whole = b""
    return records


def read_events(path, event_pb2):
    """TFRecord framing: length (8 bytes), its CRC (4), the Event proto, its CRC (4)."""
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12 : at + 12 + length])
        events.append(event)
        at += 12 + length + 4
    return events
