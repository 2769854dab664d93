"""Quiet cores before a baseline is timed: the side timed before it must be gone, not exiting.

Ray kills an actor, and `ray.shutdown()` stops a local cluster, without waiting for the processes
to exit; vLLM's engines, the sandbox's workers and Ray's own daemons can still be running seconds
later. On 2 shared cores a baseline timed then shares them: HF `generate` on the tiny model measured
3,092 tokens/s right after the pool's shutdown, and 12,122 once the pool's processes had exited
(this machine, minutes apart).
"""

from __future__ import annotations

import psutil


def process_trees(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants (a vLLM server's engine core, a cluster's workers)."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def settle(processes: list[psutil.Process], timeout_s: float = 30.0) -> list[str]:
    """Wait until every one of `processes` has exited; kill any still running after `timeout_s` (they
    belong to a side that is done). Returns what had to be killed, for the bench's output."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    killed = []
    for process in alive:
        try:
            name = f"{process.pid} {process.name()}"
            process.kill()
        except psutil.NoSuchProcess:  # it exited by itself after all
            continue
        killed.append(name)
    psutil.wait_procs(alive, timeout=10)
    return killed


def descendants() -> list[psutil.Process]:
    """Every process this one started, and theirs (a local Ray cluster's daemons and workers)."""
    return psutil.Process().children(recursive=True)
