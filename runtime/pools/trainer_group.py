"""TrainerGroup: the driver's handle on N TrainerShard actors stepping as one data-parallel model,
and the in-place recovery of a lost shard.

A step's data is cut into one part per configured replica (`placement.trainer.replicas`), and
each shard trains on the parts it holds (`TrainerShard`: gradients of a shard's parts accumulate,
scaled so the step's maths is the same however the parts are spread).

Every step goes through `_recovering`. When a step fails, the shards are probed (health() with
`supervision.health_timeout_s`): a dead or hung shard's place is taken by a warm spare
(`placement.trainer.spares`) if one is ready; otherwise its parts go to the survivors and the
group goes on smaller at once, while a fresh actor warms up in the background as a spare (the
seconds a new process spends importing torch are not spent waiting). The survivors keep their
processes. The group re-forms on a new port, the shard furthest ahead (the donor) puts its whole
state (parameters, optimizers, schedules, step, RNG) in the object store once, and every shard
behind it loads that; no checkpoint is read. A step no shard committed is redone with the same
input (the blender replays the batch; RL, SFT and DPO rows are the caller's), so the run ends
with the weights it would have had without the fault. Before each later step, a smaller group
takes back a spare that has warmed up (`_grow`): it receives the donor's state and a part, and
the group is whole again. Where no capacity is left (a lost node), the spare stays pending and the
group finishes smaller. When nothing among the shards is lost, the data source the step reads (a
blender) is checked and replaced instead; when nothing at all is lost, the error is the step's
own and goes on.

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
from runtime.core.calls import await_setup, wait
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
        first = cfg.placement.trainer.min_replicas or self.size
        self.members = [actor_name(cfg.experiment.name, "trainer", rank) for rank in range(first)]
        """Actor name at each rank (a spare that took a rank keeps its own name); fewer than `size`
        while the group runs smaller (`placement.trainer.min_replicas`, or a lost shard)."""
        self.parts = {name: list(range(rank, self.size, first)) for rank, name in enumerate(self.members)}
        """The parts of every step each member trains on: together, 0 .. size - 1."""
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

    def holder(self, part: int) -> Any:
        """The shard that trains part `part` of each step now (trainer `part` while the group is whole)."""
        return self.supervisor.handle(next(name for name in self.members if part in self.parts[name]))

    def start(self, resume_from: str | None = None, state: Any = None) -> TrainerGroup:
        """Spawn the shards, rendezvous on a port rank 0 picks, load the model (or a saved model
        directory, `resume_from`, or a checkpoint's whole shard state, `state`: an object ref); start
        the spares, and the shards beyond `min_replicas` (they join once they are up)."""
        train = self.cfg.train
        for rank, name in enumerate(self.members):
            self.supervisor.spawn(self._role(rank, name))
        init = wait(self.shards[0].rendezvous.remote(), train.setup_timeout_s, f"{self.members[0]}: rendezvous")
        world = len(self.members)
        calls = {name: self.supervisor.handle(name).setup.remote(init, resume_from, state, world, self.parts[name])
                 for name in self.members}
        ready = await_setup(calls, train.setup_timeout_s, "train.setup_timeout_s")
        self.step = ready[0]["step"]
        self._replenish()
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

    def _replenish(self) -> None:
        """Start spares until members and spares (warm or warming) cover the replicas and the spares
        configured: a group running smaller always has its replacement on the way."""
        while len(self.members) + len(self.spares) < self.size + self.cfg.placement.trainer.spares:
            self._start_spare()

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
        """Rows of part p are rows p, p + size, ...; each shard gets the rows of its parts."""
        def attempt() -> list[dict[str, Any]]:
            calls = [getattr(s, method).remote([rows[p :: self.size] for p in self.parts[name]], *args)
                     for name, s in zip(self.members, self.shards)]
            return self._watch(calls, self.cfg.train.step_timeout_s, f"trainer shards: {method}")

        return self._recovering(attempt, f"{method} at step {self.step + 1}")

    def _recovering(self, attempt: Callable[[], list[dict[str, Any]]], what: str, others: list[str] = (),
                    step: bool = True) -> Any:
        """attempt() until it succeeds, recovering what was lost between tries. A step the donor had
        already committed when the fault hit is not redone: its metrics are the donor's, and their
        `parts` say how many of the step's parts the loss covers (the lost shard's went with it)."""
        before = self.step
        for _ in range(self.cfg.supervision.max_replacements + 1):
            try:
                if step:
                    self._grow(what)  # inside: a shard lost while one joins is recovered like any other
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
        """Fill or fold the places of lost shards and re-form the group (returns the donor's (step,
        handle)), or replace a lost data source (returns None); re-raise `error` when nothing was lost."""
        statuses = {name: "hung" if name in self._hung else status
                    for name, status in self.supervisor.probe(self.members).items()}
        self._hung.clear()
        lost = [name for name in self.members if statuses[name] != "ok"]
        if not lost:
            if any(self.supervisor.ensure(name, what) for name in others):
                return None
            raise error
        started = time.perf_counter()
        survivors = [name for name in self.members if name not in lost]
        if not survivors:
            raise RunFailed(f"{what}: every trainer shard was lost; nothing to recover from (resume from a checkpoint)")
        steps = dict(zip(survivors, wait([self.supervisor.handle(n).health.remote() for n in survivors],
                                         self.cfg.supervision.health_timeout_s, f"{what}: survivors")))
        donor = max(survivors, key=lambda n: steps[n]["step"])
        donor_step, behind = steps[donor]["step"], {n for n in survivors if steps[n]["step"] < steps[donor]["step"]}
        taken = {}
        for name in lost:
            self.supervisor.retire(name, statuses[name], what)
            taken[name] = self._fill(name)
        self._replenish()
        self._regroup(donor, behind | {n for n in taken.values() if n})
        seconds = time.perf_counter() - started
        self.recoveries.append({"at": what, "lost": lost, "donor": donor, "seconds": seconds,
                                "probe": round(started - failed_at, 3), "shards": len(self.members)})
        self._report(lost, taken, what, donor, donor_step, seconds)
        return donor_step, self.supervisor.handle(donor)

    def _fill(self, lost: str) -> str | None:
        """A warm spare takes `lost`'s place and parts (returns its name); with none ready, the parts
        go to the member holding fewest and the group goes on smaller (returns None)."""
        index, parts = self.members.index(lost), self.parts.pop(lost)
        ready = self._warm_spares()
        if ready:
            self.spares.pop(ready[0])
            self.members[index], self.parts[ready[0]] = ready[0], parts
            return ready[0]
        self.members.pop(index)
        for part in parts:
            self.parts[min(self.members, key=lambda n: len(self.parts[n]))].append(part)
        return None

    def _report(self, lost: list[str], taken: dict[str, str | None], what: str, donor: str, donor_step: int,
                seconds: float) -> None:
        """One event per lost shard: replaced by a spare, or its parts carried by the others."""
        for name in lost:
            if taken[name]:
                self.supervisor.events.record(
                    "replaced", "trainer", f"{name} lost at {what}; replaced by {taken[name]} from {donor} "
                    f"(step {donor_step}) in {seconds:.1f} s", seconds=seconds, actor=name)
            else:
                self.supervisor.events.record(
                    "resized", "trainer", f"{name} lost at {what}; its part goes on with {len(self.members)} of "
                    f"{self.size} shards from {donor} (step {donor_step}) in {seconds:.1f} s; a replacement is "
                    f"warming up", seconds=seconds, actor=name)

    def _grow(self, what: str) -> None:
        """Before a step: while the group runs smaller, a warm spare joins it, takes a part from the
        member holding most, and the donor's state."""
        while len(self.members) < self.size:
            self._replenish()  # a spare that failed to warm was dropped: start another
            ready = self._warm_spares()
            if not ready:
                return
            started, name = time.perf_counter(), ready[0]
            self.spares.pop(name)
            donor = self.members[0]
            fullest = max(self.members, key=lambda n: len(self.parts[n]))
            self.members.append(name)
            self.parts[name] = [self.parts[fullest].pop()]
            self._regroup(donor, {name})
            self._replenish()
            seconds = time.perf_counter() - started
            self.recoveries.append({"at": what, "joined": name, "donor": donor, "seconds": seconds,
                                    "shards": len(self.members)})
            self.supervisor.events.record(
                "joined", "trainer", f"{name} joined before {what} from {donor} ({len(self.members)} of "
                f"{self.size} shards) in {seconds:.1f} s", seconds=seconds, actor=name)

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

    def _regroup(self, donor: str, behind: set[str]) -> None:
        """Every member joins a new group at its index, with its parts; those in `behind` (behind
        the donor, or new) take the donor's state first."""
        train = self.cfg.train
        handle = self.supervisor.handle(donor)
        init = wait(handle.rendezvous.remote(), train.setup_timeout_s, "trainer donor: rendezvous")
        state = handle.state.remote() if behind else None  # one object-store copy, handed to every taker
        calls = [self.supervisor.handle(name).regroup.remote(init, rank, len(self.members),
                                                             state if name in behind else None, self.parts[name])
                 for rank, name in enumerate(self.members)]
        wait(calls, train.setup_timeout_s, "trainer group: re-form")

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
        """Members leave their group; spares (outside any group, maybe still pending) are just killed."""
        for name in list(self.spares):
            self.supervisor.drop(name)
        for name in self.members:
            try:
                wait(self.supervisor.handle(name).shutdown.remote(), self.cfg.cluster.shutdown_timeout_s,
                     "trainer shard: shutdown")
            except (CallTimeout, PeerLost, KeyError):  # a shard already dead or stuck is what the kill below ends
                pass
            self.supervisor.drop(name)


def merged(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's figures over the group: rank 0's step, grad norm and lr (shared after the
    all-reduce), the mean over parts of loss and importance weight, the summed parts (the step's
    parts the loss covers), tokens and tokens/s."""
    out = {k: metrics[0][k] for k in ("step", "grad_norm", "lr") if k in metrics[0]}
    out.update({k: statistics.fmean(m[k] for m in metrics for _ in range(m.get("parts", 1)))
                for k in ("loss", "tis_weight", "margin", "accuracy") if k in metrics[0]})
    out.update({k: sum(m[k] for m in metrics) for k in ("parts", "tokens", "tokens_per_s") if k in metrics[0]})
    return out
