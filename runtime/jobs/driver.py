"""The experiment driver: wires the actors and steps the job. It reads as the job.

The main job: build (or find) the model; start the run's parts (runtime/jobs/parts.py);
sample from version 0; pre-train on the blended stream; publish version 1 (one
object-store copy, every server reloads in place; saved under RUN_DIR/versions);
pass@1 on held-out tasks; optional SFT, DPO and RL, each evaluated; then
summary.json, plot.png and a table of the stages. Every step may write a checkpoint
(runtime/jobs/checkpoint.py); a resumed run skips what its checkpoint says is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.core.config import FactoryConfig
from runtime.core.errors import FactoryError, Interrupted
from runtime.core.generation import GenerationRequest, GenerationResult, Workload
from runtime.core.cluster import verbose

if TYPE_CHECKING:
    from runtime.jobs.parts import RunParts


@dataclass
class RunResult:
    run_dir: Path
    version: int
    """The newest weight version published."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def run(cfg: FactoryConfig, resume: bool = False) -> RunResult:
    """The main job; with `resume`, continue the run in `experiment.run_dir` from its newest checkpoint.
    RUN_DIR/status.json says running, then finished, failed or interrupted."""
    from runtime.jobs import preflight
    from runtime.jobs.checkpoint import set_status
    from runtime.model.build import resolve_model

    preflight.check(cfg)
    model_path = resolve_model(cfg.model, cfg.experiment.seed)
    preflight.check_model(cfg, model_path)
    run_dir = prepare_run_dir(cfg)
    saved, progress = resume_point(run_dir, resume)
    set_status(run_dir, "running")
    try:
        stages, evaluated = run_parts(cfg, model_path, run_dir, saved, progress)
    except BaseException as exc:
        set_status(run_dir, "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed",
                   error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
        raise
    write_jsonl(run_dir / "samples.jsonl", progress.samples)
    print_samples(progress.samples)
    result = RunResult(run_dir, progress.version, progress.samples, finish(cfg, run_dir, stages, evaluated))
    set_status(run_dir, "finished")
    return result


def resume_point(run_dir: Path, resume: bool):
    """(the newest checkpoint, its progress) when resuming, else (None, a fresh Progress); metrics.jsonl
    is cut back to the checkpoint."""
    from runtime.jobs.checkpoint import Progress, latest, trim_metrics

    if not resume:
        return None, Progress()
    saved = latest(run_dir)
    if saved is None:
        raise FactoryError(f"{run_dir}: no complete checkpoint to resume from (set train.checkpoint_every, "
                           "or stop a run with Ctrl-C, to have one)")
    trim_metrics(run_dir, saved.progress.metrics_lines)
    say(f"resuming from {saved.path.name}: {saved.progress.stage} step {saved.progress.step}, "
        f"version {saved.progress.version}")
    return saved, saved.progress


def run_parts(cfg: FactoryConfig, model_path: Path, run_dir: Path, saved, progress) -> tuple[list[dict], list[int]]:
    """Start the parts (restored from `saved` when resuming), run the stages, stop the parts. Returns
    the stages and the versions handed to the Evaluator."""
    import ray

    from runtime.core.cluster import connect
    from runtime.jobs.checkpoint import Checkpoints, stop_requests
    from runtime.jobs.console import EventTail, collect_logs
    from runtime.jobs.parts import start
    from runtime.jobs.tracking import Tracker
    from runtime.model.versions import link_base

    tracker = Tracker(run_dir, cfg.experiment.trackers, cfg.experiment.name)
    checkpoints = Checkpoints(run_dir, cfg.train.checkpoint_every, progress, tracker, say)
    say(f"model: {model_path}")
    say(f"dashboard: {connect(cfg.cluster)}")
    if cfg.cluster.check_resources:
        from runtime.jobs.preflight import check_resources

        check_resources(cfg, ray.cluster_resources())
    link_base(run_dir, model_path)
    try:
        with stop_requests(checkpoints, say), EventTail(run_dir, say):
            parts = start(cfg, model_path, run_dir, say, trainer_state=ray.put(saved.trainer_state()) if saved else None)
            checkpoints.parts, parts.checkpoints = parts, checkpoints
            try:
                if saved:
                    restore(parts, saved)
                return run_stages(cfg, parts, run_dir, tracker, progress), parts.evaluated
            finally:
                parts.stop()
    finally:
        tracker.close()
        collect_logs(run_dir)


def restore(parts: RunParts, saved) -> None:
    """Blenders back to the checkpoint's snapshots, the task cursor, and the servers to its version."""
    from runtime.core.calls import wait

    cfg, progress = parts.cfg, saved.progress
    for name, state in ((parts.blender, saved.blenders["blender"]), (parts.tasks, saved.blenders["tasks"])):
        wait(parts.handle(name).restore.remote(state), cfg.data.batch_timeout_s, f"{name}: restore")
    parts.task_stream.step = progress.task_step
    if progress.version:
        parts.trainers.publish(parts.broadcaster, progress.version)


def run_stages(cfg: FactoryConfig, parts: RunParts, run_dir: Path, tracker, progress) -> list[dict]:
    """Pre-training (sample, train, publish v1, sample, evaluate), then SFT, DPO and RL; a resumed
    run skips what its checkpoint says is done and continues the stage in progress."""
    if progress.stage == "pretrain":
        if progress.step == 0:
            progress.samples = sample(parts.pool, cfg)
        started, history = time.perf_counter(), pretrain(cfg, parts, tracker, progress)
        say(f"published version 1: {publish(parts, run_dir, version=1)}")
        progress.version = 1
        progress.samples += sample(parts.pool, cfg)
        progress.stages.append(stage_row("pretrain", history, started, evaluate(parts, cfg, tracker, "pretrain")))
        progress.next_stage("sft")
    post_train(cfg, parts, run_dir, tracker, progress)
    return progress.stages


def post_train(cfg: FactoryConfig, parts: RunParts, run_dir: Path, tracker, progress) -> None:
    """SFT, DPO and RL (each optional), each evaluated by pass@1 on held-out tasks. Each stage
    publishes versions after the last one published; the last is saved."""
    from runtime.jobs.dpo_loop import run_dpo
    from runtime.jobs.rl_loop import run_rl
    from runtime.jobs.sft_loop import run_sft

    for stage, steps, run_stage in (("sft", cfg.sft.steps, run_sft), ("dpo", cfg.dpo.steps, run_dpo),
                                    ("rl", cfg.rl.steps, run_rl)):
        if STAGES.index(stage) < STAGES.index(progress.stage):
            continue
        if progress.stage != stage:
            progress.next_stage(stage)
        if steps:
            started = time.perf_counter()
            history, progress.version = run_stage(parts, cfg, progress, tracker.log)
            progress.stages.append(stage_row(stage, history, started, evaluate(parts, cfg, tracker, stage)))
    progress.next_stage("done")
    if progress.version > 1:
        parts.trainers.save(run_dir / "versions" / f"v{progress.version}")


STAGES = ("pretrain", "sft", "dpo", "rl", "done")


def evaluate(parts: RunParts, cfg: FactoryConfig, tracker, stage: str) -> float:
    from runtime.jobs.rl_loop import pass_at_1

    value = pass_at_1(parts, cfg)
    tracker.log({"stage": "eval", "after": stage, "step": STAGES.index(stage), "pass_at_1": value})
    say(f"pass@1 on {cfg.rl.eval_tasks} held-out tasks x {cfg.rl.eval_samples} samples after {stage}: {value:.3f}")
    return value


def stage_row(stage: str, history: list[dict[str, Any]], started: float, pass_at_1: float | None = None) -> dict:
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return {"stage": stage, "steps": len(history), "pass_at_1": pass_at_1,
            "tokens_per_s": sum(rates) / len(rates) if rates else None, "wall_s": time.perf_counter() - started,
            "history": history}


def finish(cfg: FactoryConfig, run_dir: Path, stages: list[dict[str, Any]], evaluated: list[int] = ()) -> dict[str, Any]:
    """summary.json, plot.png and the table on stdout (with each eval suite's curve over versions)."""
    from runtime.jobs.report import eval_curves, plot, synthetic_totals, table

    records = [row for s in stages for row in s["history"]]
    rows = [{k: v for k, v in s.items() if k != "history"} for s in stages]
    rl = next((s["history"] for s in stages if s["stage"] == "rl"), [])
    summary = {"stages": rows, "pass_at_1": {s["stage"]: s["pass_at_1"] for s in rows},
               "pretrain_steps": rows[0]["steps"], "sft_steps": cfg.sft.steps, "rl_steps": len(rl),
               "final_loss": stages[0]["history"][-1]["loss"] if stages[0]["history"] else None,
               "rl": {k: rl[-1][k] for k in ("groups_produced", "groups_used", "dropped_stale", "dropped_unused")}
               if rl else None,
               "rl_reward_first_last": [rl[0]["reward"], rl[-1]["reward"]] if rl else None,
               "evals": eval_curves(run_dir, evaluated), "synthetic": synthetic_totals(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(records, rows, run_dir / "plot.png", summary["evals"]["curves"])
    say(f"summary ({run_dir}):\n{table(rows, summary['evals'], summary['synthetic'])}")
    return summary


def pretrain(cfg: FactoryConfig, parts: RunParts, tracker, progress) -> list[dict[str, Any]]:
    """`train.total_steps` steps on the blended stream (from `progress.step` when resumed); metrics to
    the tracker, a progress bar to stderr, a checkpoint when due."""
    from runtime.jobs.console import progress_bar

    history = progress.history
    with progress_bar(range(progress.step, cfg.train.total_steps), desc="pre-train", initial=progress.step,
              total=cfg.train.total_steps) as bar:
        for step in bar:
            parts.drill("pretrain", step)
            metrics = {"stage": "pretrain", **parts.trainers.train_step(parts.blender, step)}
            history.append(metrics)
            tracker.log(metrics)
            parts.step_done("pretrain", history)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    say(f"pre-training loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f} over {len(history)} steps")
    return history


def publish(parts: RunParts, run_dir: Path, version: int) -> dict[str, int]:
    """Rank 0's weights, put once, reloaded in place by every server; saved as RUN_DIR/versions/vN."""
    from runtime.model.versions import version_dir

    versions = parts.trainers.publish(parts.broadcaster, version)
    parts.trainers.save(version_dir(run_dir, version))
    return versions


def prepare_run_dir(cfg: FactoryConfig) -> Path:
    """Create the run directory, record it in the config, save and print the resolved config."""
    exp = cfg.experiment
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(exp.run_dir or Path(exp.runs_root) / f"{exp.name}-{stamp}").expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    exp.run_dir = str(run_dir)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    say(f"run directory: {run_dir} (config.yaml, events.jsonl, metrics.jsonl; actors' output in logs/ at the end)")
    if verbose():
        say(f"--- resolved config ---\n{cfg.to_yaml()}-----------------------")
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
    from runtime.jobs.console import line

    line(f"[factory] {message}")
