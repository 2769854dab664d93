"""The supervisor: owns every actor handle of a run and carries out the policy's decisions.

Callers (the trainer group, the pools, the task stream, the driver) route work as before; when
a call fails they ask the supervisor to `ensure` the actor they called: it probes `health()` with
`supervision.health_timeout_s`, and a dead or hung actor is killed, replaced under the same name,
brought up by its role's `restart`, and only then handed out again. Every fault, decision and
recovery goes to the EventLog once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from runtime.core.config import FactoryConfig, SupervisionConfig
from runtime.core.errors import PeerLost, RunFailed
from runtime.supervision.events import EventLog
from runtime.supervision.policy import Policy
from runtime.supervision.role import Role

Status = Literal["ok", "died", "hung"]


class Supervisor:
    def __init__(self, cfg: SupervisionConfig, events: EventLog):
        self.cfg = cfg
        self.events = events
        self.policy = Policy(cfg.max_replacements)
        self.roles: dict[str, Role] = {}
        self.handles: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ---- owning handles --------------------------------------------------

    def spawn(self, role: Role) -> Any:
        """Register `role` and start its actor (setup is the caller's: roles set up together)."""
        handle = role.spawn(self.cfg.release_timeout_s)
        with self._lock:
            self.roles[role.name], self.handles[role.name] = role, handle
            self._locks.setdefault(role.name, threading.Lock())
        return handle

    def handle(self, name: str) -> Any:
        with self._lock:
            return self.handles[name]

    def names(self, kind: str) -> list[str]:
        with self._lock:
            return [name for name, role in self.roles.items() if role.kind == kind]

    # ---- noticing --------------------------------------------------------

    def probe(self, names: list[str]) -> dict[str, Status]:
        """health() of each named actor within supervision.health_timeout_s, all at once."""
        import ray

        refs = {name: self.handle(name).health.remote() for name in names}
        deadline = time.monotonic() + self.cfg.health_timeout_s
        out: dict[str, Status] = {}
        for name, ref in refs.items():
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                out[name] = "ok"
            except ray.exceptions.GetTimeoutError:
                out[name] = "hung"
            except ray.exceptions.RayActorError:
                out[name] = "died"
            except ray.exceptions.RayTaskError:  # alive, not set up yet (its health() raised): not a fault
                out[name] = "ok"
        return out

    def ensure(self, name: str, at: str = "") -> bool:
        """Replace `name` if it is dead or hung; True when it was replaced. `at` says where the run was."""
        with self._locks[name]:
            status = self.probe([name])[name]
            if status == "ok":
                return False
            self.replace(name, status, at)
            return True

    def watch(self, names: list[str], every_s: float) -> None:
        """Probe `names` every `every_s` in the background and replace one found dead or hung: for
        actors other processes call (the inference service), whose callers cannot ask this supervisor."""
        watched = list(names)

        def loop() -> None:
            while watched and not self._stopping.wait(every_s):
                for name in list(watched):
                    try:
                        self.ensure(name, "a health watch")
                    except KeyError:  # stopped, or no longer owned
                        return
                    except RunFailed:  # the policy gave up on it (recorded): a caller meets it, the watch stops
                        watched.remove(name)
                    except Exception as exc:  # the watch is a boundary: the next call meets the fault too
                        self.events.say(f"[factory] watching {name}: {exc}")

        threading.Thread(target=loop, name="supervisor-watch", daemon=True).start()

    # ---- replacing -------------------------------------------------------

    def replace(self, name: str, fault: Status, at: str = "", restart: bool = True) -> Any:
        """Kill what is left of `name`, spawn its replacement, bring it up (role.restart); returns its handle.
        With restart=False the caller brings it up and reports `recovered`."""
        role, where = self.roles[name], f" at {at}" if at else ""
        started = time.perf_counter()
        self._give_up_on(name, fault, where)
        handle = self._bring_up(role, restart, time.monotonic() + self.cfg.release_timeout_s)
        with self._lock:
            self.handles[name] = handle
        if restart:
            self.recovered(name, f"{name} replaced{where}", time.perf_counter() - started)
        return handle

    def _bring_up(self, role: Role, restart: bool, deadline: float) -> Any:
        """Spawn `role`'s replacement and run role.restart on it before anyone is handed it (callers
        keep the lost one, PeerLost, until then). What it needs comes back first (lost with it on
        one node). A replacement lost while starting (placed on a node Ray has not yet declared
        dead), or whose restart met a need lost meanwhile, is tried again until `deadline`; one
        that fails is killed, so that it does not keep the name from the next try."""
        import ray

        while True:
            for need in role.needs:
                self.ensure(need, f"the replacement of {role.name}")
            handle = role.spawn(max(1.0, deadline - time.monotonic()))
            if not restart or role.restart is None:
                return handle
            try:
                role.restart(handle)
                return handle
            except BaseException as exc:
                ray.kill(handle, no_restart=True)
                if not isinstance(exc, PeerLost) or time.monotonic() > deadline:
                    raise
                self.events.say(f"[factory] {role.name}: its replacement was lost while starting ({exc}); trying again")
                time.sleep(1.0)

    def retire(self, name: str, fault: Status, at: str = "") -> None:
        """`name` is lost and its place taken by another actor the caller owns (a spare): record, kill, forget."""
        self._give_up_on(name, fault, f" at {at}" if at else "")
        self.drop(name)

    def drop(self, name: str) -> None:
        """Kill `name` (if registered) and stop owning it."""
        import ray

        with self._lock:
            handle = self.handles.pop(name, None)
            self.roles.pop(name, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)

    def _give_up_on(self, name: str, fault: Status, where: str) -> None:
        """Record the fault, ask the policy, kill what is left (RunFailed when the policy says fail)."""
        import ray

        kind = self.roles[name].kind
        self.events.record("hung" if fault == "hung" else "lost", kind, f"{name} {fault}{where}", actor=name)
        decision = self.policy.decide(kind, name, fault)
        if decision.action == "fail":
            self.events.record("failed", kind, decision.reason, actor=name)
            raise RunFailed(decision.reason)
        ray.kill(self.handle(name), no_restart=True)

    def recovered(self, name: str, message: str, seconds: float) -> None:
        self.events.record("replaced", self.roles[name].kind, f"{message} in {seconds:.1f} s", seconds=seconds,
                           actor=name)

    def kill(self, name: str) -> None:
        import ray

        ray.kill(self.handle(name), no_restart=True)

    def stop(self, timeout_s: float) -> None:
        """shutdown() every actor still registered (bounded), then kill it."""
        import ray

        self._stopping.set()
        with self._lock:
            handles = dict(self.handles)
            self.handles.clear()
            self.roles.clear()
        with ThreadPoolExecutor(max(1, min(8, len(handles)))) as pool:
            list(pool.map(lambda h: _shutdown(h, timeout_s), handles.values()))
        for handle in handles.values():
            ray.kill(handle, no_restart=True)


def _shutdown(handle: Any, timeout_s: float) -> None:
    from runtime.core.calls import wait
    from runtime.core.errors import CallTimeout, PeerLost

    try:
        wait(handle.shutdown.remote(), timeout_s, "shutdown")
    except (CallTimeout, PeerLost):  # dead or stuck: the kill that follows ends it
        return


def standalone(cfg: FactoryConfig) -> Supervisor:
    """A supervisor for a part used on its own (a pool in a test or a bench): events go to the log only."""
    import logging

    return Supervisor(cfg.supervision, EventLog(None, cfg.experiment.name, logging.getLogger("factory.supervision").warning))
