"""The blender as a Ray actor: killed mid-run, a replacement restored from the last snapshot
continues exactly as an uninterrupted blender does (compared by manifests and tokens)."""

import json

import numpy as np
import pytest
import ray

from actors.data_blender import DataBlender
from runtime.core.cluster import actor_name
from runtime.core.config import load_config
from runtime.data.store import BlendStore

pytestmark = pytest.mark.cluster
SHARDS = 2


def spawn(cfg):
    handle = ray.remote(DataBlender).options(name=actor_name(cfg.experiment.name, "blender", 0),
                                            max_concurrency=8).remote(
        cfg.data, cfg.experiment.seed, cfg.experiment.run_dir, cfg.model.path, "blender/0")
    ray.get(handle.setup.remote(), timeout=120)
    return handle


def serve(handle, step):
    return [ray.get(handle.batch.remote(step, k, SHARDS), timeout=60) for k in range(SHARDS)]


def drive(handle, steps, extra_source):
    """The driver's side of the run: serve steps, with mixture changes at fixed points."""
    out = {}
    for step in steps:
        if step == 4:
            assert ray.get(handle.set_weights.remote({"python": 0.9, "arithmetic": 0.1}), timeout=30) == 4
        if step == 8:
            assert ray.get(handle.add_source.remote(extra_source), timeout=30) == 8
        out[step] = serve(handle, step)
    return out


def test_killed_blender_restored_from_snapshot_continues_exactly(ray_cluster, tiny_model, tmp_path):
    extra = tmp_path / "extra.jsonl"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta", "zeta"]
    extra.write_text("".join(json.dumps({"id": f"x{i}", "text": " ".join(rng.choice(words, 12))}) + "\n"
                             for i in range(400)))
    spec = {"name": "extra", "type": "jsonl", "paths": [str(extra)], "weight": 0.5}

    def config(name):
        return load_config("default", [f"model.path={tiny_model}", f"experiment.name={name}",
                                       f"experiment.run_dir={tmp_path / name}", "data.batch_size=8",
                                       'data.sources=[{"name": "python", "type": "generator", "weight": 0.5, '
                                       '"generator": "python_functions"}, {"name": "arithmetic", "type": '
                                       '"generator", "generator": "arithmetic", "weight": 0.5}]',
                                       "data.transforms=[license, dedup, near_dedup, length]"])

    reference = spawn(config("reference"))
    expected = drive(reference, range(10), spec)
    ray.kill(reference)

    first = spawn(config("faulty"))
    got = drive(first, range(6), spec)
    snapshot = ray.get(first.state.remote(), timeout=30)
    assert snapshot["step"] == 6 and len(json.dumps(snapshot)) < 64_000, "a snapshot is small"
    ray.kill(first)

    replacement = spawn(config("faulty"))
    ray.get(replacement.restore.remote(snapshot), timeout=30)
    got.update(drive(replacement, range(6, 10), spec))

    for step in range(10):
        for shard in range(SHARDS):
            assert got[step][shard]["manifest"] == expected[step][shard]["manifest"], f"step {step} shard {shard}"
            assert np.array_equal(got[step][shard]["input_ids"], expected[step][shard]["input_ids"])
    stores = BlendStore(tmp_path / "faulty" / "blender.sqlite"), BlendStore(tmp_path / "reference" / "blender.sqlite")
    assert [stores[0].manifest(s) for s in range(10)] == [stores[1].manifest(s) for s in range(10)]
    assert any(m["source"] == "extra" for step in (8, 9) for shard in got[step] for m in shard["manifest"])
    ray.kill(replacement)
