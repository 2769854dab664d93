"""The RL and SFT stages on real actors: task blender, vLLM pool, sandbox pool, gloo trainers, broadcaster.

The tests share one set of actors and run in file order; versions continue from one to the next
(the broadcaster refuses a version that is not newer)."""

import pytest

from runtime.core.config import load_config
from runtime.jobs.checkpoint import Progress
from runtime.jobs.parts import start
from runtime.jobs.rl_loop import run_rl
from runtime.jobs.sft_loop import run_sft

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def actors(ray_cluster, tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("rl-run")
    cfg = load_config("default", [
        f"model.path={tiny_model}", "experiment.name=test-rl", f"experiment.run_dir={run}",
        "placement.inference.replicas=1", "placement.trainer.replicas=1", "inference.cpu_bind=nobind",
        "rl.steps=5", "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_tokens=8", "rl.updates_per_step=2"])
    started = start(cfg, tiny_model, run)
    yield cfg, started
    started.stop()


def test_async_mode_bounds_staleness_and_counts_what_it_drops(actors):
    cfg, started = actors
    cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"mode": "async", "max_staleness": 0, "queue_steps": 2})})
    records = []
    history, last = run_rl(started, cfg, Progress(version=0), record=records.append)
    assert last == 5
    assert [h["version"] for h in history] == [1, 2, 3, 4, 5]
    # max_staleness 0: every group trained on was sampled by the version being trained ...
    assert all(h["staleness_max"] == 0 for h in history), [h["rollout_versions"] for h in history]
    # ... and the producer, which keeps two steps ready while a step trains, made groups with a
    # version the trainer had already left behind: those were dropped and counted, not trained on.
    final = history[-1]
    assert final["dropped_stale"] > 0
    assert final["groups_produced"] == final["groups_used"] + final["dropped_stale"] + final["dropped_unused"]
    assert final["groups_used"] == cfg.rl.steps * cfg.rl.prompts_per_step
    assert [r for r in records if r["stage"] == "rl"] == history
    # the Evaluator (eval.every=5) evaluated version 5 beside training; the stage waited for it at the end
    assert [(r["version"], r["suite"], r["step"]) for r in records if r["stage"] == "evaluator"] == [(5, "held-out", 5)]
    assert all("rollout" in h["inference"] for h in history)


def test_async_with_room_for_staleness_trains_on_older_versions_it_allows(actors):
    cfg, started = actors
    cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"mode": "async", "max_staleness": 2, "queue_steps": 2})})
    history, _ = run_rl(started, cfg, Progress(version=5), record=lambda _: None)
    assert all(0 <= h["staleness_max"] <= 2 for h in history)
    assert any(h["staleness_max"] > 0 for h in history), "the producer runs ahead: some groups are a version old"


def test_sft_lowers_the_loss_on_reference_solutions_and_publishes(actors):
    cfg, started = actors
    cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"steps": 6, "lr": 3e-3})})
    history, _ = run_sft(started, cfg, Progress(version=10), record=lambda _: None)
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    assert set(started.pool.versions().values()) == {11}


def test_chunked_rollouts_keep_every_task_in_order(actors):
    from runtime.jobs.rl_loop import collect

    cfg, started = actors
    stream = started.task_stream
    cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"rollout_chunks": 3})})
    step = stream.step
    groups = collect(started, cfg)
    stream.step = step  # the same step again, whole
    whole = collect(started, cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"rollout_chunks": 1})}))
    assert [g.task.id for g in groups] == [g.task.id for g in whole] and len(groups) == cfg.rl.prompts_per_step
    assert all(len(g.result.completions) == cfg.rl.group_size == len(g.statuses) == len(g.rewards) for g in groups)


def test_a_task_stream_mixing_code_and_answer_tasks_is_scored_per_kind(actors):
    import ray

    from dataclasses import replace

    from actors.data_blender import DataBlender
    from runtime.jobs.parts import task_data
    from runtime.jobs.rl_loop import collect
    from runtime.jobs.task_stream import TaskStream
    from runtime.supervision.role import Role

    cfg, started = actors
    mixed = type(cfg.rl.tasks).model_validate({"sources": [
        {"name": "linear", "type": "generator", "generator": "linear_tasks", "weight": 0.5},
        {"name": "arithmetic", "type": "generator", "generator": "arithmetic_tasks", "weight": 0.5}]})
    cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"tasks": mixed, "prompts_per_step": 8})})
    name = "test-rl/tasks/1"
    blender = started.supervisor.spawn(Role("tasks", 1, name, DataBlender, (
        task_data(cfg), cfg.experiment.seed, cfg.experiment.run_dir, cfg.model.path, "tasks-mixed")))
    ray.get(blender.setup.remote(), timeout=120)
    try:
        groups = collect(replace(started, task_stream=TaskStream(started.supervisor, name, cfg)), cfg)
    finally:
        started.supervisor.drop(name)
    kinds = {}
    for g in groups:
        kinds.setdefault(type(g.task).__name__, set()).update(g.statuses)
    assert set(kinds) == {"CodeTask", "AnswerTask"} and kinds["AnswerTask"] == {"exact"}
    assert "exact" not in kinds["CodeTask"]


def test_the_dpo_stage_widens_the_margin_of_chosen_over_rejected(actors, tmp_path):
    import json

    from rl import procedural
    from runtime.jobs.dpo_loop import run_dpo

    cfg, started = actors
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": procedural.prompt(a, b), "chosen": procedural.answer(a, b),
                                         "rejected": procedural.answer(a + 1, b + 5)}) + "\n"
                             for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]))
    dpo = cfg.dpo.model_copy(update={"steps": 8, "pairs": str(pairs), "lr": 3e-3, "beta": 0.5})
    history, version = run_dpo(started, cfg.model_copy(update={"dpo": dpo}), Progress(version=39), record=lambda _: None)
    assert version == 40 and set(started.pool.versions().values()) == {40}
    assert [h["stage"] for h in history] == ["dpo"] * 8
    assert history[-1]["margin"] > history[0]["margin"] + 0.05 and history[-1]["accuracy"] == 1.0, history
