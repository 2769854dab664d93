"""A trainer shard lost mid-run: the group goes on smaller at once (the survivor trains the lost
shard's part too) or a warm spare takes its place, a replacement joins once warm, and the run
ends with the weights it would have had without the fault (pre-training, SFT, and RL on the same
experience): bit for bit, as 2 parts on 1 shard scale their gradients by a power of two.

Real gloo groups in Ray actors, the real blender, real SIGKILL and SIGSTOP to the shard's process
(through the `faults:` drill, as a user would run it)."""

import numpy as np
import pytest
import ray

from actors.data_blender import DataBlender
from runtime.core.cluster import actor_name
from runtime.core.config import FaultKill, FaultsConfig, load_config
from runtime.pools.trainer_group import TrainerGroup
from runtime.supervision.events import EventLog, read_events
from runtime.supervision.faults import FaultInjector
from runtime.supervision.role import Role
from runtime.supervision.supervisor import Supervisor

pytestmark = [pytest.mark.cluster, pytest.mark.fault]
STEPS = 8


def config(model, run, name, *overrides):
    return load_config("default", [f"model.path={model}", f"experiment.name={name}", f"experiment.run_dir={run}",
                                   "data.seq_len=64", "data.batch_size=8", "train.warmup_steps=2",
                                   f"train.total_steps={STEPS}", "supervision.health_timeout_s=2",
                                   "supervision.probe_interval_s=0.5", *overrides])


class Run:
    """A supervisor, a supervised blender and a trainer group: the pre-training part of a run."""

    def __init__(self, model, run, name, kills=(), overrides=()):
        self.cfg = config(model, run, name, *overrides).model_copy(
            update={"faults": FaultsConfig(kills=[FaultKill(**k) for k in kills])})
        self.run_dir = run
        self.sup = Supervisor(self.cfg.supervision, EventLog(run, name))
        self.blender = actor_name(name, "blender", 0)
        self.sup.spawn(Role("blender", 0, self.blender, DataBlender,
                            (self.cfg.data, self.cfg.experiment.seed, str(run), str(model)), {"max_concurrency": 16},
                            lambda h: ray.get(h.setup.remote(True), timeout=120)))
        ray.get(self.sup.handle(self.blender).setup.remote(), timeout=120)
        self.group = TrainerGroup(self.cfg, model, self.sup).start()
        self.drill = FaultInjector(self.cfg, self.resolve, self.sup.events)

    def resolve(self, role, index):
        return self.group.holder(index) if role == "trainer" else self.sup.handle(self.blender)

    def pretrain(self, steps=STEPS, whole_at=None):
        """`whole_at`: before that step, wait until the replacement of a lost shard has warmed up
        (the step then starts by taking it back into the group)."""
        out = []
        for step in range(steps):
            if step == whole_at:
                ray.get(list(self.group.spares.values()), timeout=120)
            self.drill.at("pretrain", step)
            out.append(self.group.train_step(self.blender, step))
        return out

    def weights(self):
        states = ray.get([s.weights.remote() for s in self.group.shards], timeout=60)
        assert all(np.array_equal(states[0][k], s[k]) for s in states[1:] for k in states[0]), "replicas differ"
        return states[0]

    def close(self):
        self.drill.stop()
        self.group.shutdown()
        self.sup.stop(5)


def max_difference(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def baseline(ray_cluster, tiny_model, tmp_path_factory):
    run = Run(tiny_model, tmp_path_factory.mktemp("base"), "test-ft-base")
    try:
        history = run.pretrain()
        return history, run.weights()
    finally:
        run.close()


@pytest.mark.parametrize("kills,whole_at", [
    ([{"role": "trainer", "index": 1, "step": 3}], None),
    ([{"role": "trainer", "index": 0, "step": 2, "delay_s": 0.05}, {"role": "trainer", "index": 1, "step": 6,
                                                                       "delay_s": 0.02}], 5),
], ids=["rank1-at-step3", "rank0-then-rank1-inside-steps"])
def test_a_killed_shard_is_carried_by_its_peer_and_the_weights_match(baseline, tiny_model, tmp_path, kills, whole_at):
    history, expected = baseline
    run = Run(tiny_model, tmp_path, "test-ft-kill", kills)
    try:
        got = run.pretrain(whole_at=whole_at)
        assert max_difference(run.weights(), expected) == 0.0
        whole = [i for i, h in enumerate(got) if h["parts"] == 2]  # a step the survivor had committed when
        assert len(whole) >= STEPS - len(kills)  # its peer died reports the survivor's part only
        assert [got[i]["loss"] for i in whole] == pytest.approx([history[i]["loss"] for i in whole], abs=1e-6)
        losses = [r for r in run.group.recoveries if "lost" in r]
    finally:
        run.close()
    events = read_events(tmp_path)
    assert sum(e["kind"] == "injected" for e in events) == len(kills)
    assert len(losses) == len(kills) and sum(e["kind"] == "resized" for e in events) == len(kills), events
    assert all("goes on with 1 of 2 shards" in e["message"] for e in events if e["kind"] == "resized")
    if whole_at is not None:  # the replacement warmed up before step 5 and joined: whole again for the 2nd kill
        joined = [e for e in events if e["kind"] == "joined"]
        assert len(joined) >= 1 and "2 of 2 shards" in joined[0]["message"], events


def test_a_hung_shard_is_noticed_by_its_probe_and_replaced(baseline, tiny_model, tmp_path):
    _, expected = baseline
    run = Run(tiny_model, tmp_path, "test-ft-hung", [{"role": "trainer", "index": 1, "step": 4, "signal": "STOP"}])
    try:
        run.pretrain()
        assert max_difference(run.weights(), expected) <= 1e-6
    finally:
        run.close()
    kinds = [e["kind"] for e in read_events(tmp_path)]
    assert "hung" in kinds and "resized" in kinds, kinds


def test_a_warm_spare_takes_the_lost_shards_place(baseline, tiny_model, tmp_path):
    _, expected = baseline
    run = Run(tiny_model, tmp_path, "test-ft-spare", [{"role": "trainer", "index": 1, "step": 3}],
              ["placement.trainer.spares=1"])
    try:
        ray.get(list(run.group.spares.values()), timeout=120)
        run.pretrain()
        assert max_difference(run.weights(), expected) <= 1e-6
        assert "trainer-spare/0" in run.group.members[1], run.group.members
        assert len(run.group.spares) == 1, "a new spare replaces the one used"
    finally:
        run.close()
    replaced = [e for e in read_events(tmp_path) if e["kind"] == "replaced"]
    assert len(replaced) == 1 and "replaced by test-ft-spare/trainer-spare/0" in replaced[0]["message"], replaced


def test_a_killed_blender_is_restored_and_replays_the_step(baseline, tiny_model, tmp_path):
    _, expected = baseline
    run = Run(tiny_model, tmp_path, "test-ft-blender", [{"role": "blender", "step": 5}])
    try:
        run.pretrain()
        assert max_difference(run.weights(), expected) <= 1e-6
    finally:
        run.close()
    replaced = [e for e in read_events(tmp_path) if e["kind"] == "replaced"]
    assert [e["role"] for e in replaced] == ["blender"]


def experience(seed, rows=8):
    rng = np.random.default_rng(seed)
    return [{"prompt_ids": rng.integers(3, 200, 6).tolist(), "completion_ids": rng.integers(3, 200, 5).tolist(),
             "logprobs": (-rng.random(5)).tolist(), "advantage": float(rng.standard_normal())} for _ in range(rows)]


def post_train(run, kill_at=None):
    """Two RL steps, then two SFT steps, on fixed rows; a SIGKILL of shard 1 at the step `kill_at`."""
    from runtime.jobs.rl_loop import algorithm_of

    if kill_at is not None:
        run.drill.kills.append(FaultKill(role="trainer", index=1, stage="rl", step=kill_at))
    for step in range(2):
        run.drill.at("rl", step)
        run.group.rl_step(experience(step), algorithm_of(run.cfg))
    for step in range(2):
        run.drill.at("rl", 2 + step)
        run.group.sft_step([{"prompt": f"q{step}{i}", "completion": f" a{i}"} for i in range(4)])
    return run.weights()


@pytest.mark.parametrize("kill_at", [1, 3], ids=["in-rl", "in-sft"])
def test_post_training_through_a_shard_kill_ends_with_the_same_weights(ray_cluster, tiny_model, tmp_path, kill_at):
    runs = {}
    for label, kill in (("clean", None), ("killed", kill_at)):
        run = Run(tiny_model, tmp_path / label, f"test-ft-post-{label}", (), ["rl.kl_coef=0.01"])
        try:
            runs[label] = post_train(run, kill)
            recoveries = sum("lost" in r for r in run.group.recoveries)
        finally:
            run.close()
        assert recoveries == (kill is not None)
    assert max_difference(runs["killed"], runs["clean"]) == 0.0


def test_three_shards_go_on_as_two_with_the_same_maths(ray_cluster, tiny_model, tmp_path):
    """3 parts on 2 shards: the carried part's gradient is scaled by 2/3, not a power of two, so
    equal to rounding, not bit for bit."""
    runs = {}
    for label, kills in (("clean", ()), ("killed", [{"role": "trainer", "index": 2, "step": 3}])):
        run = Run(tiny_model, tmp_path / label, f"test-ft-three-{label}", kills,
                  ["placement.trainer.replicas=3", "data.batch_size=6", "rl.prompts_per_step=48"])
        try:
            run.pretrain(steps=6)
            runs[label] = run.weights()
            assert [len(run.group.parts[n]) for n in run.group.members] == ([1, 1, 1] if label == "clean" else [2, 1])
        finally:
            run.close()
    assert max_difference(runs["killed"], runs["clean"]) <= 1e-6
