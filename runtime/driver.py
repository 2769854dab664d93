"""The experiment driver: wires the actors and steps the job. It reads as the job.

Today's main job: build (or find) the model, start the inference pool, sample,
publish a new weight version to every server with one `ray.put`, sample again.
Trainers replace the stand-in weights when they land.
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


def run(cfg: FactoryConfig) -> RunResult:
    import ray

    from runtime.cluster import connect
    from runtime.inference_pool import InferencePool
    from runtime.modelbuild import resolve_model
    from runtime.versions import link_base, save_version
    from runtime.weights import shareable

    model_path = resolve_model(cfg.model, cfg.experiment.seed)
    run_dir = prepare_run_dir(cfg)
    say(f"model: {model_path}")
    say(f"dashboard: {connect(cfg.cluster)}")
    link_base(run_dir, model_path)
    pool = InferencePool(cfg, model_path).start()
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    try:
        say(f"inference servers ready: {', '.join(pool.versions())}")
        samples = sample(pool, cfg)
        state = stand_in_weights(model_path, cfg.experiment.seed + 1)
        versions = pool.load_weights(1, ray.put(shareable(state)))
        save_version(run_dir, 1, state, model_path)
        say(f"published version 1: {versions}")
        samples += sample(pool, cfg)
    finally:
        pool.shutdown()
    write_jsonl(run_dir / "samples.jsonl", samples)
    print_samples(samples)
    return RunResult(run_dir, versions, samples)


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


def stand_in_weights(model_path: Path, seed: int) -> dict[str, Any]:
    """Freshly initialised weights of the same architecture, standing in for a trainer's output."""
    from transformers import AutoConfig

    from runtime.modelbuild import init_model

    return init_model(AutoConfig.from_pretrained(model_path), seed).state_dict()


def print_samples(samples: list[dict[str, Any]]) -> None:
    for s in samples:
        say(f"[v{s['version']} {s['server']}] {s['prompt']!r} -> {s['completion']!r}")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def say(message: str) -> None:
    print(f"[factory] {message}", flush=True)
