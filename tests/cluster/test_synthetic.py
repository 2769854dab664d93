"""The SyntheticGenerator in a running set of parts: its samples, asked of the shared inference service
under the synthetic class, enter the pre-training blend while training steps are served, and each
synthetic document in a step's provenance names its job and the weight version that made it. Code
samples that fail their own tests in the sandbox never enter."""

import time

import pytest
import ray

from runtime.core.calls import wait
from runtime.data.trace import trace
from runtime.core.config import load_config
from runtime.jobs.parts import start

pytestmark = pytest.mark.cluster
JOBS = ("[{name: plain, filter: none, prompts: 4, samples: 2, max_tokens: 8, batches: 3, weight: 1.0},"
        " {name: checked, filter: tests, prompts: 8, samples: 2, batches: 2}]")


@pytest.fixture(scope="module")
def parts(ray_cluster, tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("synthetic-run")
    cfg = load_config("default", [
        f"model.path={tiny_model}", "experiment.name=test-synthetic", f"experiment.run_dir={run}",
        "placement.inference.replicas=1", "placement.trainer.replicas=1", "inference.cpu_bind=nobind",
        "data.batch_size=4", f"synthetic.jobs={JOBS}"])
    started = start(cfg, tiny_model, run)
    yield cfg, started, run
    started.stop()


def test_synthetic_samples_enter_the_blend_mid_run_with_their_provenance(parts):
    cfg, started, run = parts
    generator = started.handle(started.synthetic)
    trained = [started.trainers.train_step(started.blender, step) for step in range(2)]  # the run is under way
    deadline = time.monotonic() + 300
    while len(rows := wait(generator.results.remote(), 30, "results")) < 5:
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    plain = [r for r in rows if r["job"] == "plain"]
    checked = [r for r in rows if r["job"] == "checked"]
    assert [r["batch"] for r in plain] == [0, 1, 2] and [r["batch"] for r in checked] == [0, 1]
    assert all(r["samples"] == 8 and r["kept"] > 0 and r["fed_at_step"] >= 1 for r in plain), plain
    # version 0 is a random model: none of its code passes its own tests, so nothing of it enters
    assert all(r["samples"] == 16 and r["passed"] == 0 and r["kept"] == 0 for r in checked), checked
    assert all(0 < r["diversity"] <= 1 and r["mean_tokens"] > 0 for r in rows)

    first_fed = min(r["fed_at_step"] for r in plain)
    for step in range(2, first_fed + 4):
        trained.append(started.trainers.train_step(started.blender, step))
    synthetic = [d for step in range(first_fed, first_fed + 4) for d in trace(run, step)["documents"]
                 if d["source"] == "synthetic"]
    assert synthetic, "the live source fed mid-run is in the blend's later steps"
    assert all(d["doc_id"].startswith("synthetic/plain/v0/b") for d in synthetic), synthetic
    assert not any(d["source"] == "synthetic" for step in range(first_fed) for d in trace(run, step)["documents"])
    stats = started.pool.stats()["classes"]["synthetic"]
    assert stats["requests"] >= 3 * 4 + 2 * 8

    # a replacement takes over from the live source its predecessor added, and reads its rows back
    killed = wait(generator.health.remote(), 30, "health")["pid"]
    ray.kill(generator)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(generator.health.remote(), timeout=30)  # the kill has landed
    started.supervisor.ensure(started.synthetic, "a test")  # or the run's health watch got there first
    assert wait(started.handle(started.synthetic).health.remote(), 30, "health")["pid"] != killed, "replaced"
    assert len(wait(started.handle(started.synthetic).results.remote(), 30, "results")) == 5
