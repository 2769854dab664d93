"""The inference service's scheduling rules as plain logic (the real service is tested in
tests/cluster/test_inference_service.py): priority, quotas, lending, weighted fairness, pins."""

from collections import Counter
from dataclasses import dataclass, field

import pytest

from runtime.core.config import FactoryConfig, WorkloadClass
from runtime.core.errors import StaleVersionError
from runtime.pools.scheduling import Scheduler, class_rates


@dataclass(eq=False)
class Slot:
    ready: bool = True
    version: int | None = 0
    load: int = 0
    generation: int = 0
    loads: Counter = field(default_factory=Counter)


def classes(**quota):
    base = FactoryConfig().inference.classes
    return {k: WorkloadClass(priority=v.priority, quota=quota.get(k, v.quota)) for k, v in base.items()}


def test_rollouts_go_first_and_lower_classes_wait_while_they_wait_for_room():
    s, slots = Scheduler(classes(), seqs_per_server=8), [Slot(), Slot()]
    synthetic = s.enqueue("synthetic", 4, None)
    first = [s.enqueue("rollout", 8, None) for _ in range(2)]
    s.grant(slots, 0)
    assert all(t.slot is not None for t in first) and synthetic.slot is None
    third = s.enqueue("rollout", 8, None)
    s.grant(slots, 0)
    assert third.slot is None and synthetic.slot is None  # a rollout waits for room: synthetic waits behind it
    s.done(first[0])
    s.grant(slots, 0)
    assert third.slot is slots[0] and synthetic.slot is None


def test_lower_class_work_in_flight_does_not_hold_back_a_higher_class():
    s, slot = Scheduler(classes(), seqs_per_server=8), Slot()
    synthetic = s.enqueue("synthetic", 8, None)
    s.grant([slot], 0)
    rollout, more = s.enqueue("rollout", 8, None), s.enqueue("synthetic", 8, None)
    s.grant([slot], 0)
    assert synthetic.slot is slot and rollout.slot is slot and more.slot is None
    assert slot.load == 16 and slot.loads == Counter({0: 8, 2: 8})


def test_with_preemption_a_lower_class_keeps_off_a_server_holding_higher_class_work():
    s, busy, idle = Scheduler(classes(), seqs_per_server=8, exclusive=True), Slot(), Slot()
    rollout = s.enqueue("rollout", 2, None)
    s.grant([busy], 0)
    evals = s.enqueue("eval", 2, None)
    s.grant([busy], 0)
    assert rollout.slot is busy and evals.slot is None  # room in slots, but the rollout has the server
    s.grant([busy, idle], 0)
    assert evals.slot is idle


def test_idle_capacity_is_lent_to_a_lower_class():
    s, slots = Scheduler(classes(), seqs_per_server=8), [Slot(), Slot()]
    rollout = s.enqueue("rollout", 8, None)
    synthetic = s.enqueue("synthetic", 8, None)
    s.grant(slots, 0)
    assert rollout.slot is not None and synthetic.slot is not None and rollout.slot is not synthetic.slot


def test_a_class_past_its_quota_waits_only_while_another_class_waits():
    s, slots = Scheduler(classes(rollout=0.5), seqs_per_server=8), [Slot(), Slot()]
    held = s.enqueue("rollout", 8, None)
    s.grant(slots, 0)
    more, evals = s.enqueue("rollout", 8, None), s.enqueue("eval", 8, None)
    s.grant(slots, 0)
    assert held.slot and more.slot is None and evals.slot is not None  # rollouts capped at half: eval gets the rest
    alone = Scheduler(classes(rollout=0.5), seqs_per_server=8)
    both = [alone.enqueue("rollout", 8, None) for _ in range(2)]
    alone.grant([Slot(), Slot()], 0)
    assert all(t.slot is not None for t in both)  # nobody else waits: the quota does not apply


def test_classes_of_one_priority_share_by_quota():
    s = Scheduler(classes(eval=1.0, playground=0.5), seqs_per_server=1)
    slots = [Slot() for _ in range(3)]
    waiting = [s.enqueue("eval", 1, None) for _ in range(3)] + [s.enqueue("playground", 1, None) for _ in range(3)]
    s.grant(slots, 0)
    got = sorted(t.workload for t in waiting if t.slot is not None)
    assert got == ["eval", "eval", "playground"]


def test_pinned_tickets_go_to_their_version_and_fail_when_nobody_holds_it():
    s, old, new = Scheduler(classes(), seqs_per_server=8), Slot(version=3), Slot(version=4)
    pinned, fresh = s.enqueue("eval", 1, 3), s.enqueue("rollout", 1, None)
    s.grant([old, new], 4)
    assert pinned.slot is old and fresh.slot is new
    gone = s.enqueue("eval", 1, 2)
    assert s.grant([old, new], 4) == [gone] and isinstance(gone.error, StaleVersionError)


def test_nothing_goes_to_a_server_while_it_loads():
    s, loading = Scheduler(classes(), seqs_per_server=8), Slot(version=None)
    ticket = s.enqueue("rollout", 1, None)
    assert s.grant([loading], 5) == [] and ticket.slot is None


def test_class_rates_are_per_interval():
    row = dict(chunks=0, requests=0, seqs=0, tokens=0, wait_s=0.0, held_seq_s=0.0)
    before = {"time": 10.0, "capacity": 10, "classes": {"rollout": dict(row)}}
    after = {"time": 12.0, "capacity": 10, "classes": {"rollout": {**row, "chunks": 2, "requests": 4, "tokens": 100,
                                                                  "wait_s": 1.0, "held_seq_s": 10.0}}}
    rates = class_rates(before, after)
    assert rates == {"rollout": {"tokens": 100, "tokens_per_s": 50.0, "requests": 4, "preempted": 0, "wait_s": 0.5,
                                 "share": 0.5}}


def test_an_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown workload class"):
        Scheduler(classes(), 8).enqueue("training", 1, None)


def test_the_autoscaler_grows_while_requests_wait_and_shrinks_after_a_quiet_spell():
    from runtime.pools.scheduling import Autoscaler

    scaler = Autoscaler(low=1, high=2, up_after_s=2.0, down_after_s=10.0)
    assert scaler.decide(1, oldest_wait_s=1.0, in_flight=8, seqs_per_server=8, now=0) == 0  # not waited long enough
    assert scaler.decide(1, oldest_wait_s=2.5, in_flight=8, seqs_per_server=8, now=1) == 1
    assert scaler.decide(2, oldest_wait_s=9.0, in_flight=16, seqs_per_server=8, now=2) == 0  # at max
    assert scaler.decide(2, oldest_wait_s=0.0, in_flight=9, seqs_per_server=8, now=3) == 0  # would not fit on one
    assert scaler.decide(2, oldest_wait_s=0.0, in_flight=4, seqs_per_server=8, now=4) == 0  # quiet from now
    assert scaler.decide(2, oldest_wait_s=0.0, in_flight=4, seqs_per_server=8, now=13) == 0
    assert scaler.decide(2, oldest_wait_s=0.0, in_flight=0, seqs_per_server=8, now=14) == -1
    assert scaler.decide(1, oldest_wait_s=0.0, in_flight=0, seqs_per_server=8, now=100) == 0  # at min
