"""The parts of a running experiment, started together, supervised, and stopped together.

`start` spawns each role named `<experiment>/<role>/<index>` (the Ray dashboard lists them):
the pre-training blender, the task blender, the weight broadcaster, the inference pool, the
trainer group and the sandbox pool. One Supervisor (runtime/supervision/) owns every actor
handle; the parts hold names and ask it for the current handle, so a replacement is used as
soon as it is ready. If any part fails to start, the ones already started are stopped before
the error goes on; `RunParts.stop` ends them all, blenders through their own shutdown() so
their SQLite stores close cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.core.config import DataConfig, FactoryConfig
from runtime.jobs.task_stream import TaskStream
from runtime.pools.inference_pool import InferencePool, server_names
from runtime.pools.sandbox_pool import SandboxPool
from runtime.pools.trainer_group import TrainerGroup
from runtime.supervision.events import EventLog
from runtime.supervision.faults import FaultInjector
from runtime.supervision.supervisor import Supervisor


@dataclass
class RunParts:
    cfg: FactoryConfig
    supervisor: Supervisor
    events: EventLog
    blender: str
    """The pre-training DataBlender's name (the supervisor holds its handle)."""
    tasks: str
    """The RL task DataBlender's name."""
    broadcaster: str
    """The WeightBroadcaster's name."""
    pool: InferencePool | None = None
    trainers: TrainerGroup | None = None
    sandbox: SandboxPool | None = None
    task_stream: TaskStream | None = None
    """The driver's cursor over `tasks`."""
    faults: FaultInjector | None = None
    checkpoints: Any = None
    """runtime/jobs/checkpoint.py's Checkpoints, when the driver keeps them."""

    def drill(self, stage: str, step: int) -> None:
        """Arm the `faults:` drills of this step (none by default)."""
        if self.faults is not None:
            self.faults.at(stage, step)

    def step_done(self, stage: str, history: list, **progress: Any) -> None:
        """A step of `stage` finished and was recorded: a checkpoint when due (or when told to stop)."""
        if self.checkpoints is not None:
            self.checkpoints.step_done(stage, history, **progress)

    def handle(self, name: str) -> Any:
        return self.supervisor.handle(name)

    def stop(self) -> None:
        if self.faults is not None:
            self.faults.stop()
        for part in (self.trainers, self.pool, self.sandbox):
            if part is not None:
                part.shutdown()
        self.supervisor.stop(self.cfg.cluster.shutdown_timeout_s)


def start(cfg: FactoryConfig, model_path: Path, run_dir: Path, say=print, trainer_state: Any = None) -> RunParts:
    """Start every part; `trainer_state` (an object ref of a checkpoint's shard state) resumes the trainers."""
    from runtime.core.cluster import actor_name

    events = EventLog(run_dir, cfg.experiment.name, say=print)
    name = cfg.experiment.name
    parts = RunParts(cfg, Supervisor(cfg.supervision, events), events, actor_name(name, "blender", 0),
                     actor_name(name, "tasks", 0), actor_name(name, "broadcaster", 0))
    try:
        _start(parts, model_path, run_dir, say, trainer_state)
    except BaseException:
        parts.stop()
        raise
    return parts


def _start(parts: RunParts, model_path: Path, run_dir: Path, say, trainer_state: Any) -> None:
    from actors.weight_broadcaster import latest_of
    from runtime.core.calls import setup_all

    cfg, sup = parts.cfg, parts.supervisor
    for role in _roles(parts, model_path):
        sup.spawn(role)
    names = [parts.blender, parts.tasks, parts.broadcaster]
    setup_all({n: sup.handle(n) for n in names}, cfg.inference.setup_timeout_s, "inference.setup_timeout_s")
    parts.pool = InferencePool(cfg, model_path, latest=latest_of(lambda: sup.handle(parts.broadcaster)),
                               supervisor=sup).start()
    say(f"inference servers ready: {', '.join(parts.pool.versions())}")
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    parts.trainers = TrainerGroup(cfg, model_path, sup).start(state=trainer_state)
    parts.sandbox = SandboxPool(cfg, sup).start()
    parts.task_stream = TaskStream(sup, parts.tasks, cfg)
    parts.faults = FaultInjector(cfg, lambda role, index: _resolve(parts, role, index), parts.events)


def _roles(parts: RunParts, model_path: Path) -> list:
    """The single actors of a run: both blenders (a replacement restores from its snapshots) and
    the broadcaster (a replacement republishes the trainers' newest version)."""
    from actors.data_blender import DataBlender
    from actors.weight_broadcaster import WeightBroadcaster
    from runtime.core.calls import wait
    from runtime.supervision.role import Role
    from serve.weight_service import expose

    cfg, exp, place = parts.cfg, parts.cfg.experiment, parts.cfg.placement

    def restore(handle) -> None:
        wait(handle.setup.remote(True), cfg.inference.setup_timeout_s, "blender replacement: setup")

    def republish(handle) -> None:
        wait(handle.setup.remote(), cfg.inference.setup_timeout_s, "broadcaster replacement: setup")
        if parts.trainers is not None and parts.trainers.published:
            wait(handle.publish.remote(parts.trainers.published, [parts.trainers.weights_ref()]),
                 cfg.weights.publish_timeout_s, f"broadcaster replacement: republish v{parts.trainers.published}")

    blenders = [Role(role, 0, name, DataBlender, (data, exp.seed, exp.run_dir, str(model_path), role),
                     resources(getattr(place, role)), restore)
                for role, name, data in (("blender", parts.blender, cfg.data), ("tasks", parts.tasks, task_data(cfg)))]
    broadcaster = Role("broadcaster", 0, parts.broadcaster, WeightBroadcaster,
                       (cfg.weights, server_names(cfg), parts.broadcaster, expose if cfg.weights.grpc.enabled else None),
                       {}, republish)
    return [*blenders, broadcaster]


def _resolve(parts: RunParts, role: str, index: int) -> Any:
    """The actor that holds (role, index) now: what a fault drill signals."""
    if role == "trainer":
        return parts.trainers.holder(index)
    if role == "inference":
        return parts.pool.slots[index].handle
    if role == "sandbox":
        return parts.sandbox.workers[index].handle
    return parts.handle({"blender": parts.blender, "tasks": parts.tasks, "broadcaster": parts.broadcaster}[role])


def task_data(cfg: FactoryConfig) -> DataConfig:
    """What the task blender blends: `rl.tasks`' sources, unpacked, one step of tasks per RL step."""
    return DataConfig(sources=cfg.rl.tasks.sources, transforms=cfg.rl.tasks.transforms, pack=False,
                      batch_size=cfg.rl.prompts_per_step, skip_bad_lines=cfg.data.skip_bad_lines,
                      batch_timeout_s=cfg.data.batch_timeout_s)


def resources(place) -> dict[str, Any]:
    """Ray actor options of a role's placement."""
    return {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus, "max_concurrency": place.max_concurrency,
            **({"resources": dict(place.resources)} if place.resources else {})}
