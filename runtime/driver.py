"""The experiment driver: wires the actors and steps the job. It reads as the job.

The main job: build (or find) the model; start the blenders (pre-training data, RL
tasks), the weight broadcaster, the inference pool, the trainer group and the
sandbox pool; sample from version 0; pre-train on the blended stream; publish
version 1 (one object-store copy, every server reloads in place; saved under
RUN_DIR/versions); pass@1 on held-out tasks; optional SFT and RL, each evaluated;
then summary.json, plot.png and a table of the stages.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import FactoryConfig
from runtime.generation import GenerationRequest, GenerationResult, Workload


@dataclass
class RunResult:
    run_dir: Path
    versions: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def run(cfg: FactoryConfig) -> RunResult:
    from runtime.cluster import connect
    from runtime.modelbuild import resolve_model
    from runtime.tracking import Tracker
    from runtime.versions import link_base

    model_path = resolve_model(cfg.model, cfg.experiment.seed)
    run_dir = prepare_run_dir(cfg)
    tracker = Tracker(run_dir, cfg.experiment.trackers, cfg.experiment.name)
    say(f"model: {model_path}")
    say(f"dashboard: {connect(cfg.cluster)}")
    link_base(run_dir, model_path)
    actors = start_actors(cfg, model_path, run_dir)
    try:
        samples = sample(actors["pool"], cfg)
        stages = [pretrain(cfg, actors, tracker)]
        versions = publish(actors, run_dir, version=1)
        say(f"published version 1: {versions}")
        samples += sample(actors["pool"], cfg)
        stages += post_train(cfg, actors, run_dir, tracker, stages[0])
    finally:
        stop_actors(actors)
        tracker.close()
    write_jsonl(run_dir / "samples.jsonl", samples)
    print_samples(samples)
    return RunResult(run_dir, versions, samples, finish(cfg, run_dir, stages))


def post_train(cfg: FactoryConfig, actors: dict[str, Any], run_dir: Path, tracker, pretrained: dict) -> list[dict]:
    """pass@1 on held-out tasks after pre-training, then SFT and RL (each optional), each evaluated."""
    from runtime.rl_loop import run_rl
    from runtime.sft_loop import run_sft

    pretrained["pass_at_1"] = evaluate(actors, cfg, tracker, "pretrain")
    stages, version = [], 1
    if cfg.sft.steps:
        started = time.perf_counter()
        history = run_sft(actors, cfg, version + 1, tracker.log)
        version += 1
        stages.append(stage_row("sft", history, started, evaluate(actors, cfg, tracker, "sft")))
    if cfg.rl.steps:
        started = time.perf_counter()
        history = run_rl(actors, cfg, version + 1, tracker.log)
        version += len(history)
        stages.append(stage_row("rl", history, started, evaluate(actors, cfg, tracker, "rl")))
    if version > 1:
        actors["trainers"].save(run_dir / "versions" / f"v{version}")
    return stages


def evaluate(actors: dict[str, Any], cfg: FactoryConfig, tracker, stage: str) -> float:
    from runtime.rl_loop import pass_at_1

    value = pass_at_1(actors, cfg)
    tracker.log({"stage": "eval", "after": stage, "step": ["pretrain", "sft", "rl"].index(stage), "pass_at_1": value})
    say(f"pass@1 on {cfg.rl.eval_tasks} held-out tasks x {cfg.rl.eval_samples} samples after {stage}: {value:.3f}")
    return value


def stage_row(stage: str, history: list[dict[str, Any]], started: float, pass_at_1: float | None = None) -> dict:
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return {"stage": stage, "steps": len(history), "pass_at_1": pass_at_1,
            "tokens_per_s": sum(rates) / len(rates) if rates else None, "wall_s": time.perf_counter() - started,
            "history": history}


def finish(cfg: FactoryConfig, run_dir: Path, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json, plot.png and the table on stdout."""
    from runtime.report import plot, table

    records = [row for s in stages for row in s["history"]]
    rows = [{k: v for k, v in s.items() if k != "history"} for s in stages]
    rl = next((s["history"] for s in stages if s["stage"] == "rl"), [])
    summary = {"stages": rows, "pass_at_1": {s["stage"]: s["pass_at_1"] for s in rows},
               "pretrain_steps": rows[0]["steps"], "sft_steps": cfg.sft.steps, "rl_steps": len(rl),
               "final_loss": stages[0]["history"][-1]["loss"] if stages[0]["history"] else None,
               "rl": {k: rl[-1][k] for k in ("groups_produced", "groups_used", "dropped_stale", "dropped_unused")}
               if rl else None,
               "rl_reward_first_last": [rl[0]["reward"], rl[-1]["reward"]] if rl else None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(records, rows, run_dir / "plot.png")
    say(f"summary ({run_dir}):\n{table(rows)}")
    return summary


def start_actors(cfg: FactoryConfig, model_path: Path, run_dir: Path) -> dict[str, Any]:
    """Blender, broadcaster, inference pool and trainer group, each named <experiment>/<role>/<index>."""
    import ray

    from actors.data_blender import DataBlender
    from actors.weight_broadcaster import WeightBroadcaster, latest_of
    from runtime.cluster import actor_name
    from runtime.inference_pool import InferencePool
    from runtime.rl_loop import TaskStream
    from runtime.sandbox_pool import SandboxPool
    from runtime.trainer_group import TrainerGroup

    exp = cfg.experiment.name
    blender = ray.remote(DataBlender).options(name=actor_name(exp, "blender", 0), max_concurrency=16).remote(cfg)
    tasks = ray.remote(DataBlender).options(name=actor_name(exp, "tasks", 0), max_concurrency=4).remote(
        task_stream_config(cfg), "tasks")
    broadcaster = ray.remote(WeightBroadcaster).options(name=actor_name(exp, "broadcaster", 0)).remote(cfg)
    ray.get([blender.setup.remote(), tasks.setup.remote(), broadcaster.setup.remote()],
            timeout=cfg.inference.setup_timeout_s)
    pool = InferencePool(cfg, model_path, latest=latest_of(broadcaster)).start()
    say(f"inference servers ready: {', '.join(pool.versions())}")
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    trainers = TrainerGroup(cfg, model_path).start()
    sandbox = SandboxPool(cfg).start()
    return {"blender": blender, "tasks": tasks, "task_stream": TaskStream(tasks, cfg), "broadcaster": broadcaster,
            "pool": pool, "trainers": trainers, "sandbox": sandbox}


def task_stream_config(cfg: FactoryConfig) -> FactoryConfig:
    """The config a task blender runs on: `rl.tasks` as its data, unpacked, one step per RL step."""
    from runtime.config import DataConfig

    data = DataConfig(sources=cfg.rl.tasks.sources, transforms=cfg.rl.tasks.transforms, pack=False,
                      batch_size=cfg.rl.prompts_per_step, skip_bad_lines=cfg.data.skip_bad_lines,
                      batch_timeout_s=cfg.data.batch_timeout_s)
    return cfg.model_copy(update={"data": data})


def pretrain(cfg: FactoryConfig, actors: dict[str, Any], tracker) -> dict[str, Any]:
    """`train.total_steps` steps on the blended stream; metrics to the tracker, a progress bar to stderr."""
    from tqdm import tqdm

    history, started = [], time.perf_counter()
    with tqdm(range(cfg.train.total_steps), desc="pre-train") as bar:
        for step in bar:
            metrics = {"stage": "pretrain", **actors["trainers"].train_step(actors["blender"], step)}
            history.append(metrics)
            tracker.log(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    say(f"pre-training loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f} over {len(history)} steps")
    return stage_row("pretrain", history, started)


def publish(actors: dict[str, Any], run_dir: Path, version: int) -> dict[str, int]:
    """Rank 0's weights, put once, reloaded in place by every server; saved as RUN_DIR/versions/vN."""
    from runtime.versions import version_dir

    versions = actors["trainers"].publish(actors["broadcaster"], version)
    actors["trainers"].save(version_dir(run_dir, version))
    return versions


def stop_actors(actors: dict[str, Any]) -> None:
    import ray

    actors["trainers"].shutdown()
    actors["pool"].shutdown()
    actors["sandbox"].shutdown()
    for role in ("blender", "tasks", "broadcaster"):
        ray.kill(actors[role])


def prepare_run_dir(cfg: FactoryConfig) -> Path:
    """Create the run directory, record it in the config, save and print the resolved config."""
    exp = cfg.experiment
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(exp.run_dir or Path(exp.runs_root) / f"{exp.name}-{stamp}").expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    exp.run_dir = str(run_dir)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    say(f"run directory: {run_dir}\n--- resolved config ---\n{cfg.to_yaml()}-----------------------")
    return run_dir


def sample(pool, cfg: FactoryConfig) -> list[dict[str, Any]]:
    requests = [
        GenerationRequest(prompt=p, sampling=cfg.inference.sampling, workload=Workload.EVAL)
        for p in cfg.inference.probe_prompts
    ]
    return [summarise(r) for r in pool.generate(requests)]


def summarise(result: GenerationResult) -> dict[str, Any]:
    c = result.completions[0]
    return {"version": result.version, "server": result.server, "prompt": result.prompt, "completion": c.text,
            "tokens": len(c.token_ids), "finish_reason": c.finish_reason}


def print_samples(samples: list[dict[str, Any]]) -> None:
    for s in samples:
        say(f"[v{s['version']} {s['server']}] {s['prompt']!r} -> {s['completion']!r}")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def say(message: str) -> None:
    print(f"[factory] {message}", flush=True)
