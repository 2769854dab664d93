"""The cgroups of one sandbox slot: memory (counts tmpfs, /dev/shm and memfd pages) and pids.

Works on cgroup v1 (one hierarchy per controller) and v2 (one directory with
both). A slot's cgroups are named `factory-sandbox-<worker pid>-<tag>-<slot>`;
ones left by a worker process that no longer exists are removed when a new
slot is made, so none accumulate.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

PREFIX = "factory-sandbox-"
V1 = {"memory": Path("/sys/fs/cgroup/memory"), "pids": Path("/sys/fs/cgroup/pids")}
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
LIMIT_FILES = {"memory": ("memory.limit_in_bytes", "memory.max"), "pids": ("pids.max", "pids.max")}
OOM_FILES = ("memory.oom_control", "memory.events")


class CgroupsMissing(OSError):
    """No writable cgroup for a controller the sandbox needs."""


class SlotCgroups:
    """Memory and pids cgroups that hold one slot's whole process tree."""

    def __init__(self, paths: dict[str, Path], version: int):
        self.paths = paths
        self.version = version

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int) -> SlotCgroups:
        roots, version = controller_roots()
        paths = {}
        for controller, root in roots.items():
            remove_stale(root)
            path = root / (PREFIX + name)
            path.mkdir(exist_ok=True)
            paths[controller] = path
        made = cls(paths, version)
        made._write("memory", memory_bytes)
        made._write("pids", max_pids)
        _try_write(paths["memory"] / ("memory.memsw.limit_in_bytes" if version == 1 else "memory.swap.max"),
                   memory_bytes if version == 1 else 0)  # no swapping past the limit, where swap accounting exists
        return made

    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in dict.fromkeys(self.paths.values())]

    def oom_kills(self) -> int:
        """Processes the kernel killed for memory in this slot so far."""
        text = (self.paths["memory"] / OOM_FILES[self.version - 1]).read_text()
        found = re.search(r"^oom_kill (\d+)$", text, re.M)
        return int(found.group(1)) if found else 0

    def pids(self) -> list[int]:
        """Every process in the slot (host pids)."""
        return _pids(self.procs_files())

    def kill_all(self, wait_s: float = 2.0) -> None:
        """SIGKILL every process in the slot and wait (briefly) until the kernel has reaped them."""
        _kill_all(self.procs_files(), wait_s)

    def remove(self) -> None:
        self.kill_all()
        for path in dict.fromkeys(self.paths.values()):
            _rmdir(path)

    def _write(self, controller: str, value: int) -> None:
        (self.paths[controller] / LIMIT_FILES[controller][self.version - 1]).write_text(str(value))


def controller_roots() -> tuple[dict[str, Path], int]:
    """Where a memory and a pids cgroup can be made: v1 hierarchies, else a v2 root with both."""
    if all(_writable(root) for root in V1.values()):
        return dict(V1), 1
    for root in V2_ROOTS:
        controllers = root / "cgroup.subtree_control"
        if _writable(root) and controllers.exists() and {"memory", "pids"} <= set(controllers.read_text().split()):
            return {"memory": root, "pids": root}, 2
    raise CgroupsMissing("no writable memory and pids cgroups (v1 /sys/fs/cgroup/{memory,pids} or a v2 root "
                         "delegating both); run the sandbox worker as root or give it a delegated cgroup")


def remove_stale(root: Path) -> None:
    """Remove slot cgroups whose worker process is gone (left by a killed worker)."""
    for path in root.glob(PREFIX + "*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _rmdir(path)


def _writable(root: Path) -> bool:
    return (root / "cgroup.procs").exists() and os.access(root, os.W_OK)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:  # still holds processes
        _kill_all([str(path / "cgroup.procs")], wait_s=2.0)
        try:
            path.rmdir()
        except OSError:
            pass


def _pids(procs_files: list[str]) -> list[int]:
    found = set()
    for procs in procs_files:
        try:
            found.update(int(p) for p in Path(procs).read_text().split())
        except FileNotFoundError:
            pass
    return sorted(found)


def _kill_all(procs_files: list[str], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while pids := _pids(procs_files):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _try_write(path: Path, value: int) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        pass
