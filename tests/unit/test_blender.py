"""The data blender as a plain class (no Ray): mixing, changes, filters, replay, determinism."""

import json
import math
from pathlib import Path
from collections import Counter

import pytest

from actors.data_blender import DataBlender
from runtime.core.config import load_config
from runtime.data.blend import EndOfData, document_ids
from runtime.data.sources import DataFileError

# The tests' own blend, whatever the default recipe mixes: two generators, dedup on.
BLEND = ['data.sources=[{"name": "python", "type": "generator", "generator": "python_functions", "weight": 0.5}, '
         '{"name": "arithmetic", "type": "generator", "generator": "arithmetic", "weight": 0.5}]',
         "data.transforms=[license, dedup, length]"]


@pytest.fixture
def make(tmp_path, tiny_model):
    started = []

    def make(*overrides, run_dir=None):
        cfg = load_config("default", [f"model.path={tiny_model}", f"experiment.run_dir={run_dir or tmp_path / 'run'}",
                                      "placement.trainer.replicas=1", *BLEND, *overrides])  # a blender alone
        blender = DataBlender(cfg.data, cfg.experiment.seed, cfg.experiment.run_dir, tiny_model)
        blender.setup()
        started.append(blender)
        return blender

    yield make
    for blender in started:
        blender.shutdown()


def drain(blender, steps=50):
    """Every doc id served until the blend ends, and the drops of all served steps by reason."""
    served = []
    for step in range(steps):
        try:
            served += [p["doc_id"] for m in blender.batch(step)["manifest"] for p in m["pieces"]]
        except EndOfData:
            return served, sum((Counter(blender.store.manifest(s)["drops"]) for s in range(step)), Counter())
    raise AssertionError("the source did not end")


def sources_of(batch):
    return [m["source"] for m in batch["manifest"]]


def test_realised_mix_matches_weights(make):
    blender = make("data.batch_size=50", "data.sources.0.weight=0.8", "data.sources.1.weight=0.2")
    counts = Counter(s for step in range(20) for s in sources_of(blender.batch(step)))
    n, p = 1000, 0.8
    tolerance = 4 * math.sqrt(n * p * (1 - p))  # 4 sigma of a binomial: fails by chance ~1 in 15,000 runs
    assert abs(counts["python"] - n * p) < tolerance, counts


def test_set_weights_and_add_source_change_the_mix_from_the_next_batch(make, tmp_path):
    blender = make("data.batch_size=20")
    assert set(sources_of(blender.batch(0))) == {"python", "arithmetic"}
    blender.batch(1)
    assert blender.set_weights({"python": 1.0, "arithmetic": 0.0}) == 2
    assert set(sources_of(blender.batch(2))) == {"python"}
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"id": f"e{i}", "text": f"extra document number {i}"}) + "\n" for i in range(500)))
    assert blender.add_source({"name": "extra", "type": "jsonl", "paths": [str(extra)], "weight": 1.0}) == 3
    assert set(sources_of(blender.batch(3))) == {"python", "extra"}
    assert [(c["step"], c["kind"]) for c in blender.changes()] == [(2, "set_weights"), (3, "add_source")]


def test_replay_returns_the_identical_batch(make):
    blender = make()
    first = blender.batch(0, shard=1, num_shards=2)
    blender.batch(1, 0, 2)
    again = blender.batch(0, shard=1, num_shards=2)
    assert (first["input_ids"] == again["input_ids"]).all() and first["manifest"] == again["manifest"]


def test_shards_of_a_step_are_disjoint_and_complete(make):
    blender = make("data.batch_size=12")
    whole = blender.batch(0)
    parts = [blender.batch(0, shard=k, num_shards=3) for k in range(3)]
    ids = [d for p in parts for m in p["manifest"] for d in [(m["source"], x["doc_id"], x["offset"]) for x in m["pieces"]]]
    assert len(ids) == len(set(ids)), "a document piece went to two shards"
    assert sorted(ids) == sorted(document_ids({"samples": whole["manifest"]})), "something was skipped"


def test_same_config_same_stream(make, tmp_path):
    a = make(run_dir=tmp_path / "a")
    b = make(run_dir=tmp_path / "b")
    for step in range(5):
        assert a.batch(step)["manifest"] == b.batch(step)["manifest"]


def test_packing_keeps_pieces_whole_and_marks_segments(make):
    batch = make("data.seq_len=32").batch(0)
    for row, segments, manifest in zip(batch["input_ids"], batch["segment_ids"], batch["manifest"]):
        assert len(row) == 32
        for k, piece in enumerate(manifest["pieces"], 1):
            span = segments[piece["start"] : piece["start"] + piece["length"]]
            assert (span == k).all() and piece["length"] <= 32


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def jsonl_source(path, name="files", **extra):
    return [f"data.sources=[{json.dumps({'name': name, 'type': 'jsonl', 'paths': [str(path)], **extra})}]"]


def test_dedup_works_across_sources(make, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": f"shared text {i}"} for i in range(20)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": f"shared  text {i}"} for i in range(20)]
                    + [{"id": "b-unique", "text": "only in b"}])
    sources = json.dumps([{"name": "a", "type": "jsonl", "paths": [str(a)]}, {"name": "b", "type": "jsonl", "paths": [str(b)]}])
    blender = make(f"data.sources={sources}", "data.batch_size=4")
    served, drops = drain(blender)
    texts = {d.removeprefix("a").removeprefix("b") for d in served if d != "b-unique"}
    assert len(texts) == 20 and len(served) == 21, "each text once, whichever source came first"
    assert drops["duplicate"] == 20


def test_license_filter(make, tmp_path):
    rows = [{"id": f"d{i}", "text": f"document {i}", "license": lic} for i, lic in enumerate(["mit", "gpl-3.0", "apache-2.0"] * 5)]
    path = write_jsonl(tmp_path / "licensed.jsonl", rows + [{"id": "nolicense", "text": "no license here"}])
    blender = make(*jsonl_source(path), "data.license_allow=[mit, apache-2.0]", "data.allow_missing_license=false",
                   "data.batch_size=2")
    served, drops = drain(blender)
    assert sorted(served) == sorted(r["id"] for r in rows if r["license"] != "gpl-3.0")
    assert drops["license"] == 6


def test_malformed_line_names_file_and_line(make, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine line one"}, "{not json", {"text": "fine line three"}])
    blender = make(*jsonl_source(path), "data.batch_size=4", "data.batch_timeout_s=10")
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: malformed line"):
        blender.batch(0)


def test_bad_lines_can_be_skipped_and_are_counted(make, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine line one"}, "{not json", "[1]", {"text": "fine line four"}])
    blender = make(*jsonl_source(path), "data.batch_size=4", "data.skip_bad_lines=true")
    batch = blender.batch(0)
    assert len(batch["manifest"]) == 1 and blender.store.manifest(0)["drops"] == {"malformed": 2}


def test_live_source_is_fed_by_put(make):
    live = json.dumps({"name": "live", "type": "live", "weight": 1.0})
    blender = make(f"data.sources=[{live}]", "data.batch_size=2", "data.batch_timeout_s=5")
    at = blender.put("live", [{"id": "s1", "text": "synthetic sample one"}, {"id": "s2", "text": "synthetic sample two"}])
    assert at == 0
    assert [p["doc_id"] for m in blender.batch(0)["manifest"] for p in m["pieces"]] == ["s1", "s2"]


def test_factory_trace_finds_the_documents_of_a_step(make, tmp_path):
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    blender = make("data.batch_size=4", run_dir=tmp_path / "traced")
    served = [blender.batch(step) for step in range(3)]
    expected = [(m["source"], p["doc_id"]) for m in served[1]["manifest"] for p in m["pieces"]]
    factory = str(Path(sys.executable).parent / "factory")
    table = subprocess.run([factory, "trace", str(tmp_path / "traced"), "--step", "1"], capture_output=True, text=True)
    assert table.returncode == 0 and not table.stdout.lstrip().startswith("{"), "a table for people by default"
    out = subprocess.run([factory, "trace", str(tmp_path / "traced"), "--step", "1", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [(d["source"], d["doc_id"]) for d in result["documents"]] == expected
    assert result["highest_loss"] == []

    db = sqlite3.connect(tmp_path / "traced" / "blender.sqlite")
    db.executemany("INSERT INTO sample_losses VALUES (1, ?, ?)", [(0, 0.5), (2, 9.0), (1, 2.0)])
    db.commit()
    result = json.loads(subprocess.run([factory, "trace", str(tmp_path / "traced"), "--step", "1", "--top", "2", "--json"],
                                       capture_output=True, text=True).stdout)
    assert [h["sample"] for h in result["highest_loss"]] == [2, 1]
    assert result["highest_loss"][0]["documents"][0]["doc_id"] == served[1]["manifest"][2]["pieces"][0]["doc_id"]
    missing = subprocess.run([factory, "trace", str(tmp_path / "traced"), "--step", "99"], capture_output=True, text=True)
    assert missing.returncode == 2 and "step 99 was not served" in missing.stderr


def test_parquet_source_resumes_by_row(make, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"p{i}", "text": f"parquet row {i} with some text"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=7)
    blender = make(f"data.sources=[{json.dumps({'name': 'pq', 'type': 'parquet', 'paths': [str(tmp_path / 'rows.parquet')]})}]",
                   "data.batch_size=3", run_dir=tmp_path / "pq-run")
    served, _ = drain(blender)
    assert served == [r["id"] for r in rows]


def test_near_dedup_drops_near_copies(make, tmp_path):
    base = "the quick brown fox jumps over the lazy dog near the river bank at dawn"
    rows = [{"id": "orig", "text": base}, {"id": "near", "text": base + "!"},
            {"id": "other", "text": "an entirely different sentence about parsing json files quickly"}]
    blender = make(*jsonl_source(write_jsonl(tmp_path / "n.jsonl", rows), transforms=["near_dedup"]),
                   "data.batch_size=1")
    served, drops = drain(blender)
    assert served == ["orig", "other"] and drops == {"near_duplicate": 1}


def test_length_and_outlier_filters(make, tmp_path):
    rows = [{"id": "short", "text": "hi"}, {"id": "ok", "text": "a perfectly normal sentence"},
            {"id": "long", "text": "x" * 500}, {"id": "binary", "text": "\u0001\u0002\u0003\u0004" * 10 + "abc"}]
    blender = make(*jsonl_source(write_jsonl(tmp_path / "l.jsonl", rows)), "data.max_chars=400", "data.batch_size=1")
    served, drops = drain(blender)
    assert served == ["ok"] and drops == {"too_short": 1, "too_long": 1, "non_text": 1}


def test_unpacked_stream_serves_whole_task_documents(make, tmp_path):
    from rl.tasks import parse_line

    lines = (Path(__file__).resolve().parents[1] / "data" / "humaneval_sample.jsonl").read_text().splitlines()
    path = write_jsonl(tmp_path / "tasks.jsonl", lines * 2)
    blender = make(*jsonl_source(path, text_field="*"), "data.pack=false", "data.batch_size=2", "data.transforms=[]")
    served = []
    for step in range(3):
        shards = [blender.batch(step, shard, 2) for shard in range(2)]
        assert [len(s["documents"]) for s in shards] == [1, 1] and "input_ids" not in shards[0]
        served += [parse_line(d["text"], d["id"]).id for s in shards for d in s["documents"]]
    assert served == ["Sample/0", "Sample/1", "Sample/2"] * 2
    with pytest.raises(EndOfData):
        blender.batch(3)


def test_linear_task_generator_makes_tasks_their_own_solution_passes(make):
    from rl.tasks import parse_line

    blender = make('data.sources=[{"name": "linear", "type": "generator", "generator": "linear_tasks"}]',
                   "data.pack=false", "data.batch_size=4", "data.transforms=[]")
    for doc in blender.batch(0)["documents"]:
        task = parse_line(doc["text"], doc["id"])
        namespace = {}
        exec(task.prefix + task.solution, namespace)
        namespace["candidate"] = namespace["f"]
        for case, _ in task.cases:
            exec(case, namespace)


def test_a_generator_is_a_known_name_or_an_importable_function():
    import random

    from runtime.core.errors import FactoryError
    from runtime.data.sources import generator

    assert generator("runtime.data.corpus:arithmetic", "mine")(random.Random(0)).endswith("\n")
    with pytest.raises(FactoryError, match="source mine: unknown generator nope .*known: function_examples"):
        generator("nope", "mine")
    with pytest.raises(FactoryError, match="source mine: generator no_such_module:f: No module named"):
        generator("no_such_module:f", "mine")
