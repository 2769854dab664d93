"""Waiting on another process: every wait has a timeout and ends in a named error.

`wait` is ray.get with the two ways a call can fail to answer turned into errors that say
which call and what happened: CallTimeout (hung or slow) and PeerLost (the actor died). An
error raised inside the remote method comes back as itself. `setup_all` waits for actors'
setup() the same way, naming the ones not ready in a SetupTimeout.
"""

from __future__ import annotations

from typing import Any

from runtime.core.errors import CallTimeout, PeerLost, SetupTimeout


def wait(refs: Any, timeout_s: float, what: str) -> Any:
    """ray.get(refs) within `timeout_s`; `what` names the call in the error ("trainer 1: rendezvous")."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise CallTimeout(f"{what}: no answer within {timeout_s:g}s") from None
    except ray.exceptions.RayActorError as exc:
        raise PeerLost(f"{what}: the actor is gone ({type(exc).__name__})") from exc


def await_setup(refs: dict[str, Any], timeout_s: float, field: str) -> list[Any]:
    """Wait for setup() calls, keyed by actor name; SetupTimeout names the ones not ready and the
    config `field` that bounds them. A setup that raised raises here."""
    import ray

    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    late = [name for name, ref in refs.items() if ref not in ready]
    if late:
        raise SetupTimeout(f"{', '.join(late)}: setup() did not finish within {timeout_s:g}s ({field})")
    return [wait(ref, timeout_s, f"{name}: setup") for name, ref in refs.items()]


def setup_all(handles: dict[str, Any], timeout_s: float, field: str, *args: Any) -> list[Any]:
    """Call setup(*args) on every named handle and wait for all, as await_setup."""
    return await_setup({name: handle.setup.remote(*args) for name, handle in handles.items()}, timeout_s, field)


def unwrap(exc: BaseException) -> BaseException:
    """The error raised inside a remote method, through any depth of actor calls (a RayTaskError's
    message is a whole remote traceback; its cause is the error itself)."""
    while getattr(exc, "cause", None) is not None and type(exc).__name__.startswith("RayTaskError"):
        exc = exc.cause
    return exc
