"""The parts of a running experiment, started together, supervised, and stopped together.

`start` spawns each role named `<experiment>/<role>/<index>` (the Ray dashboard lists them):
the pre-training blender, the task blender, the weight broadcaster, the inference service (which
owns the inference servers; every caller reaches them through an InferenceClient), the trainer
group and the sandbox pool. One Supervisor (runtime/supervision/) owns every actor
handle; the parts hold names and ask it for the current handle, so a replacement is used as
soon as it is ready. If any part fails to start, the ones already started are stopped before
the error goes on; `RunParts.stop` ends them all, blenders through their own shutdown() so
their SQLite stores close cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.core.config import DataConfig, FactoryConfig
from runtime.core.errors import FactoryError
from runtime.core.inference_client import InferenceClient, service_name
from runtime.jobs.task_stream import TaskStream
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
    service: str = ""
    """The InferenceService's name."""
    evaluator: str = ""
    """The Evaluator's name."""
    synthetic: str | None = None
    """The SyntheticGenerator's name, when synthetic.jobs has any."""
    evaluated: list[int] = field(default_factory=list)
    """Versions handed to the Evaluator during training."""
    pool: InferenceClient | None = None
    """The driver's client of the inference service."""
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

    def evaluate(self, version: int) -> None:
        """Hand `version` to the Evaluator; it evaluates in the background while training goes on."""
        from runtime.core.calls import wait

        self.evaluated.append(version)
        try:
            wait(self.handle(self.evaluator).submit.remote(version), self.cfg.supervision.health_timeout_s,
                 f"{self.evaluator}: submit v{version}")
        except FactoryError:  # lost: the supervisor replaces it; the version is counted as missed at the end
            self.supervisor.ensure(self.evaluator, f"evaluation of v{version}")

    def eval_rows(self, since: int = 0, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """The Evaluator's rows from the `since`-th on, after waiting up to `wait_s` for what it was handed."""
        import time

        from runtime.core.calls import wait

        handle, deadline = self.handle(self.evaluator), time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline and not wait(handle.idle.remote(), 10, f"{self.evaluator}: idle"):
                time.sleep(0.5)
            return wait(handle.results.remote(since), 10, f"{self.evaluator}: results")
        except FactoryError:  # lost: replaced now (a replacement reads evals.jsonl back); rows come next time
            self.supervisor.ensure(self.evaluator, "reading evaluations")
            return []

    def stop(self) -> None:
        if self.faults is not None:
            self.faults.stop()
        if self.pool is not None:  # while the broadcaster a replacement loads from is still up
            for name in self.pool.settle(self.cfg.inference.setup_timeout_s):
                self.events.record("failed", "inference", f"{name}: its replacement had not finished when the run "
                                   "ended", actor=name)
        for part in (self.trainers, self.pool, self.sandbox):
            if part is not None:
                part.shutdown()
        self.supervisor.stop(self.cfg.cluster.shutdown_timeout_s)


def start(cfg: FactoryConfig, model_path: Path, run_dir: Path, say=print, trainer_state: Any = None) -> RunParts:
    """Start every part; `trainer_state` (an object ref of a checkpoint's shard state) resumes the trainers."""
    from runtime.core.cluster import actor_name
    from runtime.jobs.console import line

    events = EventLog(run_dir, cfg.experiment.name, say=line)
    name = cfg.experiment.name
    parts = RunParts(cfg, Supervisor(cfg.supervision, events), events, actor_name(name, "blender", 0),
                     actor_name(name, "tasks", 0), actor_name(name, "broadcaster", 0), service_name(name),
                     actor_name(name, "evaluator", 0))
    try:
        _start(parts, model_path, run_dir, say, trainer_state)
    except BaseException:
        parts.stop()
        raise
    return parts


def _start(parts: RunParts, model_path: Path, run_dir: Path, say, trainer_state: Any) -> None:
    from runtime.core.calls import setup_all, wait

    cfg, sup = parts.cfg, parts.supervisor
    for role in _roles(parts, model_path, run_dir):
        sup.spawn(role)
    names = [parts.blender, parts.tasks, parts.broadcaster, parts.service, parts.evaluator]
    setup_all({n: sup.handle(n) for n in names}, cfg.inference.setup_timeout_s, "inference.setup_timeout_s")
    if parts.synthetic:  # after the blender it feeds and the service it asks
        setup_all({parts.synthetic: sup.handle(parts.synthetic)}, cfg.inference.setup_timeout_s, "inference.setup_timeout_s")
    parts.pool = InferenceClient(cfg.experiment.name, cfg.inference.request_timeout_s,
                                 on_lost=lambda: sup.ensure(parts.service, "an inference call"))
    sup.watch([n for n in (parts.service, parts.evaluator, parts.synthetic) if n], cfg.supervision.probe_interval_s * 5)
    say(f"inference servers ready: {', '.join(parts.pool.versions())}")
    if cfg.playground.enabled:
        from serve.playground import start as start_playground

        say(f"playground: {start_playground(cfg, run_dir)} (model `live` follows the run)")
    parts.trainers = TrainerGroup(cfg, model_path, sup).start(state=trainer_state)
    parts.sandbox = SandboxPool(cfg, sup).start()
    parts.task_stream = TaskStream(sup, parts.tasks, cfg)
    parts.faults = FaultInjector(cfg, lambda role, index: _resolve(parts, role, index), parts.events)
    if parts.synthetic:  # generates once the sandbox workers that filter its samples are up
        wait(sup.handle(parts.synthetic).start.remote(), cfg.supervision.health_timeout_s, f"{parts.synthetic}: start")


def _roles(parts: RunParts, model_path: Path, run_dir: Path) -> list:
    """The single actors of a run: both blenders (a replacement restores from its snapshots), the
    broadcaster (a replacement republishes the trainers' newest version) and the inference service
    (a replacement starts its servers and loads the broadcaster's newest version)."""
    from actors.data_blender import DataBlender
    from actors.weight_broadcaster import WeightBroadcaster
    from runtime.core.calls import wait
    from runtime.supervision.role import Role
    from actors.evaluator import Evaluator
    from actors.synthetic_generator import SyntheticGenerator
    from runtime.core.cluster import actor_name
    from serve.inference_service import InferenceService
    from serve.weight_service import expose

    cfg, exp, place = parts.cfg, parts.cfg.experiment, parts.cfg.placement

    def restore(handle) -> None:
        wait(handle.setup.remote(True), cfg.inference.setup_timeout_s, "blender replacement: setup")

    def set_up(handle) -> None:
        wait(handle.setup.remote(), cfg.inference.setup_timeout_s, "evaluator replacement: setup")

    def start_serving(handle) -> None:
        wait(handle.setup.remote(), cfg.inference.setup_timeout_s, "inference service replacement: setup")

    def republish(handle) -> None:
        wait(handle.setup.remote(), cfg.inference.setup_timeout_s, "broadcaster replacement: setup")
        if parts.trainers is not None and parts.trainers.published:
            wait(handle.publish.remote(parts.trainers.published, [parts.trainers.weights_ref()]),
                 cfg.weights.publish_timeout_s, f"broadcaster replacement: republish v{parts.trainers.published}")

    blenders = [Role(role, 0, name, DataBlender, (data, exp.seed, exp.run_dir, str(model_path), role),
                     resources(getattr(place, role)), restore)
                for role, name, data in (("blender", parts.blender, cfg.data), ("tasks", parts.tasks, task_data(cfg)))]
    broadcaster = Role("broadcaster", 0, parts.broadcaster, WeightBroadcaster,
                       (cfg.weights, [parts.service], parts.broadcaster, expose if cfg.weights.grpc.enabled else None),
                       {}, republish)
    service = Role("service", 0, parts.service, InferenceService,
                   (cfg, str(model_path), str(run_dir), parts.broadcaster, parts.service),
                   resources(place.service), start_serving, needs=(parts.broadcaster,))
    evaluator = Role("evaluator", 0, parts.evaluator, Evaluator, (cfg, str(run_dir), parts.evaluator),
                     resources(place.evaluator), set_up)
    if not cfg.synthetic.jobs:
        return [*blenders, broadcaster, service, evaluator]

    def resume_generating(handle) -> None:
        wait(handle.setup.remote(), cfg.inference.setup_timeout_s, "synthetic generator replacement: setup")
        wait(handle.start.remote(), cfg.supervision.health_timeout_s, "synthetic generator replacement: start")

    parts.synthetic = actor_name(cfg.experiment.name, "synthetic", 0)
    synthetic = Role("synthetic", 0, parts.synthetic, SyntheticGenerator, (cfg, str(run_dir), parts.blender, parts.synthetic),
                     resources(place.synthetic), resume_generating)
    return [*blenders, broadcaster, service, evaluator, synthetic]


def _resolve(parts: RunParts, role: str, index: int) -> Any:
    """The actor that holds (role, index) now: what a fault drill signals."""
    if role == "trainer":
        return parts.trainers.holder(index)
    if role == "inference":
        from runtime.core.calls import wait

        return wait(parts.handle(parts.service).server.remote(index), parts.cfg.supervision.health_timeout_s,
                    f"{parts.service}: server {index}")[0]
    if role == "sandbox":
        return parts.sandbox.workers[index].handle
    return parts.handle({"blender": parts.blender, "tasks": parts.tasks, "broadcaster": parts.broadcaster,
                         "service": parts.service, "evaluator": parts.evaluator,
                         "synthetic": parts.synthetic}[role])


def task_data(cfg: FactoryConfig) -> DataConfig:
    """What the task blender blends: `rl.tasks`' sources, unpacked, one step of tasks per RL step."""
    return DataConfig(sources=cfg.rl.tasks.sources, transforms=cfg.rl.tasks.transforms, pack=False,
                      batch_size=cfg.rl.prompts_per_step, skip_bad_lines=cfg.data.skip_bad_lines,
                      batch_timeout_s=cfg.data.batch_timeout_s)


def resources(place) -> dict[str, Any]:
    """Ray actor options of a role's placement."""
    return {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus, "max_concurrency": place.max_concurrency,
            **({"resources": dict(place.resources)} if place.resources else {})}
