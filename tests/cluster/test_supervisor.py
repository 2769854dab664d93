"""The supervisor replacing real actors on the shared cluster: roles lost together (one node) come
back in the order their restarts need, and a replacement whose restart fails does not keep the name.
The actors are WeightBroadcasters (light, no model); the dependent role's restart asks the other for
its newest version, as the inference service's setup asks the broadcaster."""

import time

import pytest
import ray

from actors.weight_broadcaster import WeightBroadcaster, latest_of
from runtime.core.calls import wait
from runtime.core.config import WeightsConfig, load_config
from runtime.supervision.events import EventLog
from runtime.supervision.role import Role
from runtime.supervision.supervisor import Supervisor

pytestmark = pytest.mark.cluster


def supervisor(tmp_path, said: list) -> Supervisor:
    return Supervisor(load_config("default", ["supervision.health_timeout_s=10"]).supervision,
                      EventLog(tmp_path, "sup", say=said.append))


def kill(handle) -> None:
    """SIGKILL-like loss, waited for (ray.kill is asynchronous)."""
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(handle.health.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    pytest.fail("ray.kill did not end the actor")


def set_up(handle) -> None:
    wait(handle.setup.remote(), 60, "setup")


def test_a_role_lost_with_what_its_restart_needs_comes_back_after_it(ray_cluster, tmp_path):
    said: list = []
    sup = supervisor(tmp_path, said)
    first, second = "sup/broadcaster/0", "sup/service/0"
    asked = []

    def ask_the_first(handle) -> None:  # fails (PeerLost) while the first is lost and not yet replaced
        set_up(handle)
        asked.append(latest_of(lambda: ray.get_actor(first))())

    sup.spawn(Role("broadcaster", 0, first, WeightBroadcaster, (WeightsConfig(), []), restart=set_up))
    sup.spawn(Role("service", 0, second, WeightBroadcaster, (WeightsConfig(), []), restart=ask_the_first,
                   needs=(first,)))
    for name in (first, second):
        set_up(sup.handle(name))
    try:
        for name in (first, second):
            kill(sup.handle(name))
        assert sup.ensure(second, "a test") is True
        assert asked == [None], "the dependent's restart reached the first's replacement"
        replaced = [line for line in said if " replaced" in line]
        assert [line.split()[1] for line in replaced] == [first, second], said
        assert sup.probe([first, second]) == {first: "ok", second: "ok"}
    finally:
        sup.stop(10)


def test_a_replacement_whose_restart_fails_is_killed_and_the_next_try_takes_the_name(ray_cluster, tmp_path):
    said: list = []
    sup = supervisor(tmp_path, said)
    name, failing, held = "sup/tasks/0", [True], []

    def restart(handle) -> None:  # keeps a reference, as a traceback on its way to a caller does
        held.append(handle)
        set_up(handle)
        if failing[0]:
            raise RuntimeError("restart failed")

    sup.spawn(Role("tasks", 0, name, WeightBroadcaster, (WeightsConfig(), []), restart=restart))
    try:
        kill(sup.handle(name))
        with pytest.raises(RuntimeError, match="restart failed"):
            sup.ensure(name, "a test")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the failed replacement is killed: its name comes free
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{name} is still held by the replacement whose restart failed")
        failing[0] = False
        assert sup.ensure(name, "a test") is True
        assert sup.probe([name]) == {name: "ok"}
        assert [line for line in said if "replaced" in line][-1].startswith(f"[factory] {name} replaced")
    finally:
        sup.stop(10)


def test_a_replacement_lost_while_starting_is_tried_again(ray_cluster, tmp_path):
    """As on a node removed but not yet declared dead, where Ray may still place the replacement."""
    said: list = []
    sup = supervisor(tmp_path, said)
    name, starts = "sup/blender/0", []

    def restart(handle) -> None:
        starts.append(handle)
        if len(starts) == 1:
            kill(handle)
        set_up(handle)

    sup.spawn(Role("blender", 0, name, WeightBroadcaster, (WeightsConfig(), []), restart=restart))
    try:
        kill(sup.handle(name))
        assert sup.ensure(name, "a test") is True
        assert len(starts) == 2 and sup.handle(name) is starts[1]
        assert sup.probe([name]) == {name: "ok"}
        assert any("lost while starting" in line for line in said), said
        assert sum(" replaced" in line for line in said) == 1, said
    finally:
        sup.stop(10)
