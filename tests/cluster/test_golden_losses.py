"""Golden numbers: the default recipe's first pre-training steps, pinned.

Measured with the main job (`factory run default`, 2 gloo shards, the default tiny model at
seed 0) before the house was re-laid into layers; the v1 weights of that run were
bit-identical before and after. Any change to the data stream, the model, the loss or the
optimiser shows here first. (1e-6: room for a CPU whose kernels round differently, far below
what any real change moves.)"""

import pytest
import ray

from actors.data_blender import DataBlender
from runtime.core.config import load_config
from runtime.pools.trainer_group import TrainerGroup

pytestmark = pytest.mark.cluster
GOLDEN = [6.237604141235352, 5.964201927185059, 5.766210079193115, 5.451308012008667, 5.193273544311523]


def test_the_default_recipe_pretrains_exactly_as_before(ray_cluster, tiny_model, tmp_path):
    cfg = load_config("default", [f"model.path={tiny_model}", "experiment.name=test-golden",
                                  f"experiment.run_dir={tmp_path}"])
    blender = ray.remote(DataBlender).options(name="test-golden/blender/0", max_concurrency=16).remote(
        cfg.data, cfg.experiment.seed, str(tmp_path), str(tiny_model))
    ray.get(blender.setup.remote(), timeout=120)
    group = TrainerGroup(cfg, tiny_model).start()
    try:
        losses = [group.train_step(blender, step)["loss"] for step in range(len(GOLDEN))]
    finally:
        group.shutdown()
        ray.kill(blender)
    assert losses == pytest.approx(GOLDEN, abs=1e-6)
