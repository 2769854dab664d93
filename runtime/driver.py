"""The experiment driver: wires the actors and steps the job. It reads as the job.

Today's main job: build (or find) the model; start the blender, the weight
broadcaster, the inference pool and the trainer group; sample from version 0;
pre-train on the blended stream; publish version 1 (one object-store copy,
every server reloads in place; saved under RUN_DIR/versions); sample again.
Post-training (SFT, RL on verifiable tasks) and evals come next.
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
    from runtime.versions import link_base

    model_path = resolve_model(cfg.model, cfg.experiment.seed)
    run_dir = prepare_run_dir(cfg)
    say(f"model: {model_path}")
    say(f"dashboard: {connect(cfg.cluster)}")
    link_base(run_dir, model_path)
    actors = start_actors(cfg, model_path, run_dir)
    summary: dict[str, Any] = {}
    try:
        samples = sample(actors["pool"], cfg)
        history = pretrain(cfg, actors, run_dir)
        versions = publish(actors, run_dir, version=1)
        say(f"published version 1: {versions}")
        samples += sample(actors["pool"], cfg)
        summary = post_train(cfg, actors, run_dir, history)
    finally:
        stop_actors(actors)
    write_jsonl(run_dir / "samples.jsonl", samples)
    print_samples(samples)
    say(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f} over {len(history)} steps; see {run_dir}")
    return RunResult(run_dir, versions, samples, summary)


def post_train(cfg: FactoryConfig, actors: dict[str, Any], run_dir: Path, pretrain_history: list) -> dict[str, Any]:
    """pass@1 on held-out tasks before and after RL; summary.json in the run directory."""
    from runtime.rl_loop import pass_at_1, run_rl

    before = pass_at_1(actors, cfg)
    say(f"pass@1 on {cfg.rl.eval_tasks} held-out tasks after pre-training: {before:.3f}")
    history = run_rl(actors, cfg, run_dir, first_version=2) if cfg.rl.steps else []
    after = pass_at_1(actors, cfg) if history else before
    if history:
        actors["trainers"].save(run_dir / "versions" / f"v{history[-1]['version']}")
    summary = {"pass_at_1": {"pretrain": before, "rl": after}, "pretrain_steps": len(pretrain_history),
               "rl_steps": len(history), "final_loss": pretrain_history[-1]["loss"] if pretrain_history else None,
               "rl_reward_first_last": [history[0]["reward"], history[-1]["reward"]] if history else None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if history:
        say(f"pass@1: after pre-training {before:.3f}, after {len(history)} RL steps {after:.3f}")
    return summary


def start_actors(cfg: FactoryConfig, model_path: Path, run_dir: Path) -> dict[str, Any]:
    """Blender, broadcaster, inference pool and trainer group, each named <experiment>/<role>/<index>."""
    import ray

    from actors.data_blender import DataBlender
    from actors.weight_broadcaster import WeightBroadcaster, latest_of
    from runtime.cluster import actor_name
    from runtime.inference_pool import InferencePool
    from runtime.sandbox_pool import SandboxPool
    from runtime.trainer_group import TrainerGroup

    exp = cfg.experiment.name
    blender = ray.remote(DataBlender).options(name=actor_name(exp, "blender", 0), max_concurrency=16).remote(cfg)
    broadcaster = ray.remote(WeightBroadcaster).options(name=actor_name(exp, "broadcaster", 0)).remote(cfg)
    ray.get([blender.setup.remote(), broadcaster.setup.remote()], timeout=cfg.inference.setup_timeout_s)
    pool = InferencePool(cfg, model_path, latest=latest_of(broadcaster)).start()
    say(f"inference servers ready: {', '.join(pool.versions())}")
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    trainers = TrainerGroup(cfg, model_path).start()
    sandbox = SandboxPool(cfg).start()
    return {"blender": blender, "broadcaster": broadcaster, "pool": pool, "trainers": trainers, "sandbox": sandbox}


def pretrain(cfg: FactoryConfig, actors: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """`train.total_steps` steps on the blended stream; metrics to metrics.jsonl, a progress bar to stderr."""
    from tqdm import tqdm

    history = []
    with open(run_dir / "metrics.jsonl", "a") as log, tqdm(range(cfg.train.total_steps), desc="pre-train") as bar:
        for step in bar:
            metrics = {"stage": "pretrain", **actors["trainers"].train_step(actors["blender"], step)}
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    return history


def publish(actors: dict[str, Any], run_dir: Path, version: int) -> dict[str, int]:
    """Rank 0's weights, put once, reloaded in place by every server; saved as RUN_DIR/versions/vN."""
    import ray

    from runtime.versions import version_dir

    versions = ray.get(actors["broadcaster"].publish.remote(version, [actors["trainers"].weights_ref()]), timeout=600)
    actors["trainers"].save(version_dir(run_dir, version))
    return versions


def stop_actors(actors: dict[str, Any]) -> None:
    import ray

    actors["trainers"].shutdown()
    actors["pool"].shutdown()
    actors["sandbox"].shutdown()
    for role in ("blender", "broadcaster"):
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
