"""The parts of a running experiment, started together and stopped together.

`start` spawns each role named `<experiment>/<role>/<index>` (the Ray dashboard lists them):
the pre-training blender, the task blender, the weight broadcaster, the inference pool, the
trainer group and the sandbox pool. If any part fails to start, the ones already started are
stopped before the error goes on; `RunParts.stop` ends them all, blenders through their own
shutdown() so their SQLite stores close cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runtime.core.config import DataConfig, FactoryConfig
from runtime.jobs.task_stream import TaskStream
from runtime.pools.inference_pool import InferencePool
from runtime.pools.sandbox_pool import SandboxPool
from runtime.pools.trainer_group import TrainerGroup


@dataclass
class RunParts:
    blender: Any
    """DataBlender actor: the pre-training stream."""
    tasks: Any
    """DataBlender actor: the RL task stream (one task per document)."""
    broadcaster: Any
    """WeightBroadcaster actor: publishes versions to the inference servers."""
    pool: InferencePool
    trainers: TrainerGroup
    sandbox: SandboxPool
    task_stream: TaskStream
    """The driver's cursor over `tasks`."""

    cfg: FactoryConfig

    def stop(self) -> None:
        stop(vars(self), self.cfg.cluster.shutdown_timeout_s)


def start(cfg: FactoryConfig, model_path: Path, run_dir: Path, say=print) -> RunParts:
    started: dict[str, Any] = {}
    try:
        _start(cfg, model_path, run_dir, started, say)
    except BaseException:
        stop(started, cfg.cluster.shutdown_timeout_s)
        raise
    return RunParts(cfg=cfg, **{f.name: started[f.name] for f in fields(RunParts) if f.name != "cfg"})


def _start(cfg: FactoryConfig, model_path: Path, run_dir: Path, started: dict[str, Any], say) -> None:
    import ray

    from actors.data_blender import DataBlender
    from actors.weight_broadcaster import WeightBroadcaster, latest_of
    from runtime.core.calls import setup_all
    from runtime.core.cluster import actor_name
    from runtime.pools.inference_pool import server_names
    from serve.weight_service import expose

    exp, place = cfg.experiment, cfg.placement
    for role, data in (("blender", cfg.data), ("tasks", task_data(cfg))):
        started[role] = ray.remote(DataBlender).options(name=actor_name(exp.name, role, 0),
                                                        **resources(getattr(place, role))).remote(
            data, exp.seed, exp.run_dir, str(model_path), role)
    started["broadcaster"] = ray.remote(WeightBroadcaster).options(name=actor_name(exp.name, "broadcaster", 0)).remote(
        cfg.weights, server_names(cfg), expose=expose if cfg.weights.grpc.enabled else None)
    setup_all({actor_name(exp.name, role, 0): started[role] for role in ("blender", "tasks", "broadcaster")},
              cfg.inference.setup_timeout_s, "inference.setup_timeout_s")
    started["pool"] = InferencePool(cfg, model_path, latest=latest_of(started["broadcaster"])).start()
    say(f"inference servers ready: {', '.join(started['pool'].versions())}")
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    started["trainers"] = TrainerGroup(cfg, model_path).start()
    started["sandbox"] = SandboxPool(cfg).start()
    started["task_stream"] = TaskStream(started["tasks"], cfg)


def task_data(cfg: FactoryConfig) -> DataConfig:
    """What the task blender blends: `rl.tasks`' sources, unpacked, one step of tasks per RL step."""
    return DataConfig(sources=cfg.rl.tasks.sources, transforms=cfg.rl.tasks.transforms, pack=False,
                      batch_size=cfg.rl.prompts_per_step, skip_bad_lines=cfg.data.skip_bad_lines,
                      batch_timeout_s=cfg.data.batch_timeout_s)


def resources(place) -> dict[str, Any]:
    """Ray actor options of a role's placement."""
    return {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus, "max_concurrency": place.max_concurrency}


def stop(parts: dict[str, Any], timeout_s: float) -> None:
    """Stop whatever of the parts exists: pools and trainers through their own shutdown, blenders
    through shutdown() (closing their stores) and then a kill, the broadcaster likewise."""
    import ray

    from runtime.core.calls import wait
    from runtime.core.errors import CallTimeout, PeerLost

    for role in ("trainers", "pool", "sandbox"):
        if role in parts:
            parts[role].shutdown()
    for role in ("blender", "tasks", "broadcaster"):
        if role in parts:
            try:
                wait(parts[role].shutdown.remote(), timeout_s, f"{role}: shutdown")
            except (CallTimeout, PeerLost):  # dead or stuck: the kill below ends it
                pass
            ray.kill(parts[role])
