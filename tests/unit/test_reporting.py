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


def test_plot_is_a_png(tmp_path):
    data = plot(RECORDS, STAGES, tmp_path / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (14 * 80, 4 * 80)


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
    assert scalars[("rl/reward", 3)] == pytest.approx(0.2)


def test_a_tracker_that_is_not_installed_is_named(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "mlflow" else real_import(name, *a, **k))
    with pytest.raises(FactoryError, match=r"experiment.trackers: mlflow is chosen but not installed"):
        Tracker(tmp_path, ["mlflow"], "test")


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
