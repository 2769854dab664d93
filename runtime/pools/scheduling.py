"""Which waiting chunk goes to which inference server next: workload classes, priority, quotas.

Plain logic over tickets and slots, called under the pool's lock (so it is tested without Ray).
Rules, in the order they apply:
- A ticket (one chunk of one call) goes to a ready server holding the version it needs (its
  pinned one, else the newest published) with room for its sequences: at most
  `inference.max_num_seqs` in flight per server from its own priority and higher ones, or any
  chunk on a server with none of those. Work of lower priorities does not count against a
  higher class: its chunk goes to the engine at once and vLLM's priority queue starts its
  sequences as soon as lower-class sequences finish (so a lower class gives way within one
  sequence, not one chunk). With `inference.preempt` (the default) a higher class goes further:
  no lower-class chunk is sent to a server while it holds higher-class work, and the server stops
  lower-class sequences running when higher-class ones arrive (they are sent again later), so the
  higher class has the engine to itself within one engine step.
- Lower priority numbers first. While a ticket waits for room on a server that could take it,
  tickets of higher numbers are not sent: they wait (their chunks in flight finish, so a lower
  class gives way within one chunk).
- Within one priority, the class holding the least of its quota-weighted share goes first
  (weighted-fair); ties go to the oldest ticket.
- A class holds at most `quota` x capacity while another class waits or holds work; with nobody
  else there it may use everything (idle capacity is lent).
- A pinned ticket whose version no ready server holds fails with StaleVersionError.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.core.config import WorkloadClass
from runtime.core.errors import StaleVersionError


class Place(Protocol):
    """What the scheduler reads of a server slot."""

    ready: bool
    version: int | None
    """The version it serves; None while it loads one (nothing is sent to it then)."""
    load: int
    """Sequences in flight on it."""
    loads: Counter
    """Sequences in flight on it per priority."""
    generation: int


@dataclass
class Ticket:
    workload: str
    seqs: int
    version: int | None
    """The pinned version; None takes the newest."""
    order: int
    queued_at: float = field(default_factory=time.monotonic)
    slot: Any = None
    generation: int = 0
    error: Exception | None = None
    granted_at: float | None = None


class Scheduler:
    def __init__(self, classes: dict[str, WorkloadClass], seqs_per_server: int, exclusive: bool = False):
        """`exclusive` (inference.preempt): no chunk goes to a server holding work of a lower priority number."""
        self.classes = classes
        self.seqs_per_server = seqs_per_server
        self.exclusive = exclusive
        self.waiting: list[Ticket] = []
        self.held: Counter[str] = Counter()
        """Sequences in flight per class."""
        self._orders = itertools.count()

    def enqueue(self, workload: str, seqs: int, version: int | None) -> Ticket:
        if workload not in self.classes:
            raise ValueError(f"unknown workload class {workload!r}; the classes are {', '.join(self.classes)}")
        ticket = Ticket(workload, seqs, version, next(self._orders))
        self.waiting.append(ticket)
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        if ticket in self.waiting:
            self.waiting.remove(ticket)

    def done(self, ticket: Ticket) -> None:
        """A granted ticket's chunk came back (or its server was lost)."""
        self.held[ticket.workload] -= ticket.seqs
        if ticket.slot.generation == ticket.generation:
            ticket.slot.load -= ticket.seqs
            ticket.slot.loads[self.classes[ticket.workload].priority] -= ticket.seqs

    def grant(self, slots: list[Place], newest: int) -> list[Ticket]:
        """Give servers to waiting tickets by the rules above (unpinned ones to servers on `newest`);
        returns those granted or failed."""
        ready = [s for s in slots if s.ready and s.version is not None]
        capacity = self.seqs_per_server * max(1, len(ready))
        settled = []
        while (ticket := self._next(ready, newest, capacity)) is not None:
            self.waiting.remove(ticket)
            settled.append(ticket)
        return settled

    def _next(self, ready: list[Place], newest: int, capacity: int) -> Ticket | None:
        """The first waiting ticket, in rank order, that fails or gets a server now (given one)."""
        blocking = None
        for ticket in sorted(self.waiting, key=self._rank):
            priority = self.classes[ticket.workload].priority
            if blocking is not None and priority > blocking:
                return None
            want = ticket.version if ticket.version is not None else newest
            holders = [s for s in ready if s.version == want]
            if ticket.version is not None and not holders:
                ticket.error = StaleVersionError(f"version {ticket.version} is no longer served (the newest is {newest})")
                return ticket
            if not holders or self._over_quota(ticket, capacity):
                continue
            roomy = [s for s in holders if self._room(s, priority, ticket.seqs)]
            if not roomy:
                blocking = priority
                continue
            self._give(ticket, min(roomy, key=lambda s: s.load))
            return ticket
        return None

    def _room(self, slot: Place, priority: int, seqs: int) -> bool:
        if self.exclusive and any(n > 0 for p, n in slot.loads.items() if p < priority):
            return False
        ahead = sum(n for p, n in slot.loads.items() if p <= priority)
        return ahead == 0 or ahead + seqs <= self.seqs_per_server

    def _rank(self, ticket: Ticket) -> tuple:
        cls = self.classes[ticket.workload]
        return cls.priority, self.held[ticket.workload] / cls.quota, ticket.order

    def _over_quota(self, ticket: Ticket, capacity: int) -> bool:
        """Past its quota while another class waits or holds work (never for a class holding nothing)."""
        held = self.held[ticket.workload]
        if held == 0 or held + ticket.seqs <= self.classes[ticket.workload].quota * capacity:
            return False
        return any(t.workload != ticket.workload for t in self.waiting) or \
            any(n > 0 for c, n in self.held.items() if c != ticket.workload)

    def _give(self, ticket: Ticket, slot: Place) -> None:
        ticket.slot, ticket.generation, ticket.granted_at = slot, slot.generation, time.monotonic()
        slot.load += ticket.seqs
        slot.loads[self.classes[ticket.workload].priority] += ticket.seqs
        self.held[ticket.workload] += ticket.seqs


class ClassStats:
    """What each workload class got: counted in the pool, exported as Ray metrics, read by stats()."""

    FIELDS = ("chunks", "requests", "seqs", "tokens", "wait_s", "held_seq_s", "preempted")

    def __init__(self, experiment: str, classes: list[str]):
        from runtime.core.metrics import ClassMetrics

        self.totals = {c: dict.fromkeys(self.FIELDS, 0) for c in classes}
        self.metrics = ClassMetrics(experiment)
        self.started = time.monotonic()

    def granted(self, ticket: Ticket) -> None:
        waited = ticket.granted_at - ticket.queued_at
        self.totals[ticket.workload]["wait_s"] += waited
        self.metrics.waited(ticket.workload, waited)

    def finished(self, ticket: Ticket, answer: dict | None, capacity: int) -> None:
        """`answer`: the server's {results, preempted}; None when the server was lost."""
        row = self.totals[ticket.workload]
        held = ticket.seqs * (time.monotonic() - ticket.granted_at)
        row["held_seq_s"] += held
        self.metrics.held(ticket.workload, held, capacity)
        if answer is None:
            return
        results = answer["results"]
        tokens = sum(len(c.token_ids) for r in results for c in r.completions)
        row["chunks"] += 1
        row["requests"] += len(results)
        row["preempted"] += len(answer["preempted"])
        row["seqs"] += sum(len(r.completions) for r in results)
        row["tokens"] += tokens
        self.metrics.served(ticket.workload, len(results), tokens)

    def snapshot(self, scheduler: Scheduler, capacity: int) -> dict[str, Any]:
        waiting = Counter()
        for t in scheduler.waiting:
            waiting[t.workload] += t.seqs
        classes = {c: {**row, "waiting_seqs": waiting[c], "in_flight_seqs": scheduler.held[c]}
                   for c, row in self.totals.items()}
        for c, row in classes.items():
            self.metrics.queued(c, row["waiting_seqs"])
        return {"time": time.monotonic() - self.started, "capacity": capacity, "classes": classes}


def class_rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per class between two stats(): tokens, tokens/s, mean queue wait of a chunk, and share of
    capacity held (sequence-seconds over capacity x seconds). Classes that did nothing are left out."""
    elapsed = max(1e-9, after["time"] - before["time"])
    out = {}
    for c, row in after["classes"].items():
        was = before["classes"].get(c, dict.fromkeys(ClassStats.FIELDS, 0))
        chunks = row["chunks"] - was["chunks"]
        if not chunks:
            continue
        tokens = row["tokens"] - was["tokens"]
        out[c] = {"tokens": tokens, "tokens_per_s": tokens / elapsed, "requests": row["requests"] - was["requests"],
                  "preempted": row.get("preempted", 0) - was.get("preempted", 0),
                  "wait_s": (row["wait_s"] - was["wait_s"]) / chunks,
                  "share": (row["held_seq_s"] - was["held_seq_s"]) / (max(1, after["capacity"]) * elapsed)}
    return out


class Autoscaler:
    """When the inference service adds or removes a server: plain logic over what the queue did.

    Up: some ticket has waited `up_after_s` and there are fewer than `high` servers. Down: for
    `down_after_s` nothing waited and the work in flight always fit on one server fewer, and there
    are more than `low`. One step at a time; a step resets both clocks."""

    def __init__(self, low: int, high: int, up_after_s: float, down_after_s: float):
        self.low, self.high, self.up_after_s, self.down_after_s = low, high, up_after_s, down_after_s
        self.quiet_since: float | None = None

    def decide(self, servers: int, oldest_wait_s: float, in_flight: int, seqs_per_server: int, now: float) -> int:
        """+1, -1 or 0 servers."""
        if oldest_wait_s >= self.up_after_s and servers < self.high:
            self.quiet_since = None
            return 1
        if oldest_wait_s > 0 or in_flight > (servers - 1) * seqs_per_server:
            self.quiet_since = None
            return 0
        self.quiet_since = self.quiet_since if self.quiet_since is not None else now
        if servers > self.low and now - self.quiet_since >= self.down_after_s:
            self.quiet_since = None
            return -1
        return 0
