"""Fault injection (the `faults:` section): chaos drills users run, and what the fault tests use.

At the start of each step the loops call `at(stage, step)`; a fault armed for it signals the
chosen actor's process (SIGKILL, or SIGSTOP for a hung one) after `delay_s`, so it can land inside
the step. Random faults are drawn once, from `faults.seed`, over the stages' step counts.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable

from runtime.core.config import FactoryConfig, FaultKill
from runtime.supervision.events import EventLog

Resolve = Callable[[str, int], object]
"""(role, index) -> the actor handle that holds that place now."""


class FaultInjector:
    def __init__(self, cfg: FactoryConfig, resolve: Resolve, events: EventLog):
        self.kills = list(cfg.faults.kills) + drawn(cfg)
        self.resolve = resolve
        self.events = events
        self.timers: list[threading.Timer] = []

    def at(self, stage: str, step: int) -> None:
        for kill in [k for k in self.kills if k.stage == stage and k.step == step]:
            self.kills.remove(kill)
            timer = threading.Timer(kill.delay_s, self._signal, (kill,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)

    def _signal(self, kill: FaultKill) -> None:
        import ray

        handle = self.resolve(kill.role, kill.index)
        try:
            pid = ray.get(handle.health.remote(), timeout=10)["pid"]
        except Exception as exc:  # noqa: BLE001 - a drill that finds its target gone records it and goes on
            self.events.record("injected", kill.role, f"fault: {kill.role} {kill.index} not signalled ({type(exc).__name__})")
            return
        os.kill(pid, getattr(signal, f"SIG{kill.signal}"))
        self.events.record("injected", kill.role, f"fault: SIG{kill.signal} to {kill.role} {kill.index} (pid {pid}) "
                           f"at {kill.stage} step {kill.step}", target_pid=pid, stage=kill.stage, step=kill.step)

    def stop(self) -> None:
        for timer in self.timers:
            timer.cancel()


def drawn(cfg: FactoryConfig) -> list[FaultKill]:
    """`faults.random` SIGKILLs at random (stage, step, role, index), reproducible from `faults.seed`."""
    rng = random.Random(cfg.faults.seed)
    steps = {"pretrain": cfg.train.total_steps, "sft": cfg.sft.steps, "dpo": cfg.dpo.steps, "rl": cfg.rl.steps}
    stages = [s for s, n in steps.items() if n]
    replicas = {"trainer": cfg.placement.trainer.replicas, "inference": cfg.placement.inference.replicas,
                "sandbox": cfg.placement.sandbox.replicas, "blender": 1, "tasks": 1, "broadcaster": 1, "service": 1, "evaluator": 1,
                "synthetic": 1 if cfg.synthetic.jobs else 0}
    roles = [r for r in cfg.faults.roles if replicas[r]]
    out = []
    for _ in range(cfg.faults.random if stages and roles else 0):
        stage, role = rng.choice(stages), rng.choice(roles)
        out.append(FaultKill(role=role, index=rng.randrange(replicas[role]), stage=stage,
                             step=rng.randrange(steps[stage]), delay_s=rng.uniform(0, 0.5)))
    return out
