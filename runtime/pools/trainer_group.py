"""TrainerGroup: the driver's handle on N TrainerShard actors stepping as one data-parallel model,
and the in-place recovery of a lost shard.

Every step goes through `_recovering`. When a step fails, the shards are probed (health() with
`supervision.health_timeout_s`): a dead or hung shard's place is taken by a warm spare
(`placement.trainer.spares`) or a fresh actor under its name; the survivors keep their
processes. The group re-forms on a new port, the shard furthest ahead (the donor) puts its whole
state (parameters, optimizers, schedules, step, RNG) in the object store once, and every shard
behind it loads that; no checkpoint is read. A step no shard committed is redone with the same
input (the blender replays the batch; RL, SFT and DPO rows are the caller's), so the run ends
with the weights it would have had without the fault. When nothing among the shards is lost,
the data source the step reads (a blender) is checked and replaced instead; when nothing at all
is lost, the error is the step's own and goes on.

While a step runs longer than `supervision.probe_interval_s`, the shards still working are
probed each interval: a hung shard (SIGSTOPped, wedged) is killed at once rather than after
the group's collective timeout.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.trainer_shard import TrainerShard
from runtime.core.calls import setup_all, wait
from runtime.core.cluster import actor_name
from runtime.core.config import FactoryConfig
from runtime.core.errors import CallTimeout, PeerLost, RunFailed
from runtime.supervision.role import Role
from runtime.supervision.supervisor import Supervisor, standalone

RECOVERABLE = (PeerLost, CallTimeout, ray.exceptions.RayTaskError, ray.exceptions.RayActorError)
"""What a step's failure looks like when a peer is lost: the lost one's PeerLost, the survivors'
collective errors (RayTaskError around gloo's RuntimeError), or a wait that ran out."""


class TrainerGroup:
    def __init__(self, cfg: FactoryConfig, model_path: Path | str, supervisor: Supervisor | None = None):
        """Without a `supervisor` (a group on its own: tests, benches) the group makes one of its own."""
        self.cfg = cfg
        self.model_path = str(model_path)
        self.supervisor = supervisor or standalone(cfg)
        self.size = cfg.placement.trainer.replicas
        self.members = [actor_name(cfg.experiment.name, "trainer", rank) for rank in range(self.size)]
        """Actor name at each rank (a spare that took a rank keeps its own name)."""
        self.spares: dict[str, Any] = {}
        """Warm spares: name -> the ref of their warm() call."""
        self._spare_count = 0
        self.step = 0
        self.published = 0
        """The newest version published (what a replacement broadcaster republishes)."""
        self.recoveries: list[dict[str, Any]] = []
        self._hung: set[str] = set()

    @property
    def shards(self) -> list[Any]:
        return [self.supervisor.handle(name) for name in self.members]

    def start(self, resume_from: str | None = None, state: Any = None) -> TrainerGroup:
        """Spawn the shards, rendezvous on a port rank 0 picks, load the model (or a saved model
        directory, `resume_from`, or a checkpoint's whole shard state, `state`: an object ref); start the spares."""
        train = self.cfg.train
        for rank, name in enumerate(self.members):
            self.supervisor.spawn(self._role(rank, name))
        init = wait(self.shards[0].rendezvous.remote(), train.setup_timeout_s, f"{self.members[0]}: rendezvous")
        ready = setup_all(dict(zip(self.members, self.shards)), train.setup_timeout_s, "train.setup_timeout_s",
                          init, resume_from, state)
        self.step = ready[0]["step"]
        for _ in range(self.cfg.placement.trainer.spares):
            self._start_spare()
        return self

    def _role(self, rank: int, name: str) -> Role:
        place = self.cfg.placement.trainer
        return Role("trainer", rank, name, TrainerShard, (self.cfg.train, self.model_path, rank, self.size, name),
                    {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus,
                     **({"resources": dict(place.resources)} if place.resources else {})})

    def _start_spare(self) -> None:
        name = actor_name(self.cfg.experiment.name, "trainer-spare", self._spare_count)
        self._spare_count += 1
        handle = self.supervisor.spawn(self._role(-1, name))
        self.spares[name] = handle.warm.remote()

    # ---- steps -------------------------------------------------------------

    def train_step(self, blender: str | Any, step: int) -> dict[str, Any]:
        """Every shard trains on its part of `step` of `blender` (a supervised actor's name, or a handle);
        returns the step's metrics over the group. The parts are fetched before any shard trains."""
        data = blender if isinstance(blender, str) else None

        def attempt() -> list[dict[str, Any]]:
            source = self.supervisor.handle(data) if data else blender
            self._watch([s.fetch.remote(source, step) for s in self.shards], self.cfg.train.batch_timeout_s,
                        f"pre-training step {step}: fetch")
            return self._watch([s.train_fetched.remote(source, step) for s in self.shards],
                               self.cfg.train.group_timeout_s + self.cfg.train.batch_timeout_s, f"pre-training step {step}")

        return self._recovering(attempt, f"pre-training step {step}", [data] if data else [])

    def rl_step(self, experience: list[dict[str, Any]], algorithm) -> dict[str, Any]:
        """Rows i, i + n, ... go to shard i (the config makes them split evenly); `algorithm`'s loss."""
        return self._split("rl_step", experience, algorithm, self.cfg.rl)

    def sft_step(self, examples: list[dict[str, str]]) -> dict[str, Any]:
        """Examples i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("sft_step", examples, self.cfg.sft)

    def dpo_step(self, pairs: list[dict[str, str]]) -> dict[str, Any]:
        """Pairs i, i + n, ... go to shard i (the config makes them split evenly)."""
        return self._split("dpo_step", pairs, self.cfg.dpo)

    def _split(self, method: str, rows: list, *args: Any) -> dict[str, Any]:
        def attempt() -> list[dict[str, Any]]:
            calls = [getattr(s, method).remote(rows[i :: self.size], *args) for i, s in enumerate(self.shards)]
            return self._watch(calls, self.cfg.train.step_timeout_s, f"trainer shards: {method}")

        return self._recovering(attempt, f"{method} at step {self.step + 1}")

    def _recovering(self, attempt: Callable[[], list[dict[str, Any]]], what: str, others: list[str] = (),
                    step: bool = True) -> Any:
        """attempt() until it succeeds, recovering what was lost between tries. A step the donor had
        already committed when the fault hit is not redone: its metrics are the donor's."""
        before = self.step
        for _ in range(self.cfg.supervision.max_replacements + 1):
            try:
                result = attempt()
            except RECOVERABLE as exc:
                donor = self._recover(exc, what, others, failed_at=time.perf_counter())
                if step and donor is not None and donor[0] > before:
                    self.step = donor[0]
                    return {**wait(donor[1].last_metrics.remote(), self.cfg.supervision.health_timeout_s, what),
                            "recovered": True}
                continue
            if not step:
                return result
            self.step += 1
            return merged(result)
        raise RunFailed(f"{what}: still failing after {self.cfg.supervision.max_replacements} recoveries")

    def _watch(self, refs: list[Any], timeout_s: float, what: str) -> list[Any]:
        """Wait for every call; meanwhile probe the shards each probe interval and kill a hung one
        (its peers' collectives then fail at once). Errors are raised once all calls have ended."""
        interval, deadline = self.cfg.supervision.probe_interval_s, time.monotonic() + timeout_s
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(interval, max(0.0, deadline - time.monotonic())))
            if pending and time.monotonic() > deadline:
                raise CallTimeout(f"{what}: no answer within {timeout_s:g}s")
            if pending:
                for name, status in self.supervisor.probe(self.members).items():
                    if status == "hung":
                        self._hung.add(name)
                        self.supervisor.kill(name)
        return wait(refs, self.cfg.supervision.health_timeout_s, what)

    # ---- recovery ------------------------------------------------------------

    def _recover(self, error: BaseException, what: str, others: list[str], failed_at: float) -> tuple[int, Any] | None:
        """Replace lost shards and re-form the group (returns the donor's (step, handle)), or replace
        a lost data source (returns None); re-raise `error` when nothing was lost."""
        statuses = {name: "hung" if name in self._hung else status
                    for name, status in self.supervisor.probe(self.members).items()}
        self._hung.clear()
        lost = [rank for rank, name in enumerate(self.members) if statuses[name] != "ok"]
        if not lost:
            if any(self.supervisor.ensure(name, what) for name in others):
                return None
            raise error
        started = time.perf_counter()
        phases = {"probe": started - failed_at}
        shards = self.shards
        survivors = [rank for rank in range(self.size) if rank not in lost]
        if not survivors:
            raise RunFailed(f"{what}: every trainer shard was lost; nothing to recover from (resume from a checkpoint)")
        steps = dict(zip(survivors, wait([shards[r].health.remote() for r in survivors],
                                         self.cfg.supervision.health_timeout_s, f"{what}: survivors")))
        donor = max(survivors, key=lambda r: steps[r]["step"])
        donor_step, lost_names = steps[donor]["step"], [self.members[r] for r in lost]
        mark = time.perf_counter()
        fresh = {rank: self._take_place(rank, statuses[self.members[rank]], what) for rank in lost}
        phases["spawn"], mark = time.perf_counter() - mark, time.perf_counter()
        self._regroup(shards[donor], donor_step, {r: steps[r]["step"] for r in survivors}, fresh)
        phases["regroup"] = time.perf_counter() - mark
        seconds = time.perf_counter() - started
        self.recoveries.append({"at": what, "lost": lost_names, "donor": donor, "seconds": seconds,
                                "phases": {k: round(v, 3) for k, v in phases.items()}})
        self.supervisor.recovered(self.members[lost[0]], f"{', '.join(lost_names)} lost at {what}; replaced from "
                                  f"trainer {donor} (step {donor_step})", seconds)
        return donor_step, self.shards[donor]

    def _take_place(self, rank: int, fault: str, what: str) -> bool:
        """Put a warm spare, or else a fresh actor under the rank's own name, at `rank`; True when it
        is fresh (it needs setup)."""
        self.supervisor.retire(self.members[rank], fault, what)
        ready = self._warm_spares()
        if ready:
            self.spares.pop(ready[0])
            self.members[rank] = ready[0]
            self._start_spare()
            return False
        self.members[rank] = actor_name(self.cfg.experiment.name, "trainer", rank)
        self.supervisor.spawn(self._role(rank, self.members[rank]))
        return True

    def _warm_spares(self) -> list[str]:
        """Spares whose warm() has finished; one whose warm() failed is dropped, loudly."""
        done = [name for name, ref in self.spares.items() if not ray.wait([ref], timeout=0)[1]]
        warm = []
        for name in done:
            try:
                wait(self.spares[name], self.cfg.supervision.health_timeout_s, f"{name}: warm")
                warm.append(name)
            except (ray.exceptions.RayTaskError, PeerLost, CallTimeout) as exc:
                self.supervisor.events.record("failed", "trainer", f"spare {name} did not warm up ({exc}); dropped",
                                              actor=name)
                self.spares.pop(name)
                self.supervisor.drop(name)
        return warm

    def _regroup(self, donor: Any, donor_step: int, steps: dict[int, int], fresh: dict[int, bool]) -> None:
        """Every shard joins a new group; those behind the donor (and the newcomers) take its state."""
        train = self.cfg.train
        init = wait(donor.rendezvous.remote(), train.setup_timeout_s, "trainer donor: rendezvous")
        state = donor.state.remote()  # one object-store copy; Ray hands it to every shard that takes it
        calls = {}
        for rank, (name, shard) in enumerate(zip(self.members, self.shards)):
            behind = rank in fresh or steps[rank] < donor_step
            calls[name] = (shard.setup.remote(init, None, state) if fresh.get(rank)
                           else shard.regroup.remote(init, rank, self.size, state if behind else None))
        wait(list(calls.values()), train.setup_timeout_s, "trainer group: re-form")

    # ---- weights ---------------------------------------------------------------

    def publish(self, broadcaster: str | Any, version: int) -> dict[str, int]:
        """Rank 0's weights as `version`: put once, reloaded in place by every server; their versions.
        `broadcaster` is a supervised actor's name (replaced if lost) or a handle."""
        name = broadcaster if isinstance(broadcaster, str) else None

        def attempt() -> dict[str, int]:
            handle = self.supervisor.handle(name) if name else broadcaster
            return wait(handle.publish.remote(version, [self.weights_ref()]), self.cfg.weights.publish_timeout_s,
                        f"publish version {version}")

        versions = self._recovering(attempt, f"publish of version {version}", [name] if name else [], step=False)
        self.published = version
        return versions

    def weights_ref(self) -> Any:
        """One object-store copy of the current weights, from rank 0 (replicas are identical)."""
        return self.shards[0].weights.remote()

    def save(self, path: Path | str) -> str:
        def attempt() -> str:
            return wait(self.shards[0].save.remote(str(path)), self.cfg.train.save_timeout_s, f"save {path}")

        return self._recovering(attempt, f"save {path}", step=False)

    def shutdown(self) -> None:
        for name in self.members + list(self.spares):
            try:
                wait(self.supervisor.handle(name).shutdown.remote(), self.cfg.cluster.shutdown_timeout_s,
                     "trainer shard: shutdown")
            except (CallTimeout, PeerLost, KeyError):  # a shard already dead or stuck is what the kill below ends
                pass
            self.supervisor.drop(name)


def merged(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's figures over the group: rank 0's step, grad norm and lr (shared after the
    all-reduce), the mean loss and importance weight, the summed tokens and tokens/s."""
    out = {k: metrics[0][k] for k in ("step", "grad_norm", "lr") if k in metrics[0]}
    out.update({k: statistics.fmean(m[k] for m in metrics) for k in ("loss", "tis_weight", "margin", "accuracy")
                if k in metrics[0]})
    out.update({k: sum(m[k] for m in metrics) for k in ("tokens", "tokens_per_s")})
    return out
