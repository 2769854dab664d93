"""What the local backends share: an execution's pipes, feeding and reading them, and the `process` backend."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.core.config import SandboxConfig
from runtime.sandbox.base import Execution, ExecutionResult, SandboxBackend, SandboxUnavailable, classify
from runtime.sandbox.cgroups import CgroupsMissing, SlotCgroups

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
CHANNEL_FD = 3


def rlimits(cfg: SandboxConfig, nproc: bool = False) -> list[tuple[str, int]]:
    """The rlimits of one execution, set soft = hard so the program cannot raise them."""
    mb = 1 << 20
    limits = [("RLIMIT_CPU", cfg.cpu_s), ("RLIMIT_AS", cfg.memory_mb * mb), ("RLIMIT_FSIZE", cfg.max_file_mb * mb),
              ("RLIMIT_NOFILE", cfg.max_open_files), ("RLIMIT_CORE", 0)]
    return limits + ([("RLIMIT_NPROC", cfg.max_processes)] if nproc else [])


class Pipes:
    """stdin, stdout, stderr and the result channel of one execution: the runner's ends and the program's."""

    def __init__(self):
        self.stdin_r, self.stdin_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.chan_r, self.chan_w = os.pipe()
        self._open = {self.stdin_r, self.stdin_w, self.out_r, self.out_w, self.err_r, self.err_w, self.chan_r,
                      self.chan_w}

    def program_ends(self) -> list[int]:
        return [self.stdin_r, self.out_w, self.err_w, self.chan_w]

    def close(self, *fds: int) -> None:
        for fd in fds or list(self._open):
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def __enter__(self) -> Pipes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pump(pipes: Pipes, stdin: bytes, end_fd: int, deadline: float, cap: int) -> tuple[dict[int, bytes], str | None]:
    """Feed stdin without blocking and read stdout, stderr and the channel (each up to `cap` + 1 bytes)
    until `end_fd` is readable (the run is over), the deadline passes or an output exceeds `cap`.

    Returns the bytes read per read fd and the reason it stopped early: `timeout`, `output_limit` or None.
    A program that never reads its stdin still ends at the deadline."""
    buffers = {fd: bytearray() for fd in (pipes.out_r, pipes.err_r, pipes.chan_r)}
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(end_fd, selectors.EVENT_READ)
        if pending:
            os.set_blocking(pipes.stdin_w, False)
            sel.register(pipes.stdin_w, selectors.EVENT_WRITE)
        else:
            pipes.close(pipes.stdin_w)
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=remaining):
                if key.fd == end_fd:
                    return _drain(buffers, cap)
                if key.fd == pipes.stdin_w:
                    pending = _feed(sel, pipes, pending)
                elif _read(sel, key.fd, buffers[key.fd], cap):
                    return _bytes(buffers), "output_limit"
    return _bytes(buffers), "timeout"


def _feed(sel: selectors.BaseSelector, pipes: Pipes, pending: memoryview) -> memoryview:
    try:
        pending = pending[os.write(pipes.stdin_w, pending[:65536]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        sel.unregister(pipes.stdin_w)
        pipes.close(pipes.stdin_w)
    return pending


def _read(sel: selectors.BaseSelector, fd: int, buffer: bytearray, cap: int) -> bool:
    """Read what is there; True when the output is over `cap`."""
    chunk = os.read(fd, 65536)
    if not chunk:
        sel.unregister(fd)
        return False
    buffer += chunk[: cap + 1 - len(buffer)]
    return len(buffer) > cap


def _drain(buffers: dict[int, bytearray], cap: int) -> tuple[dict[int, bytes], str | None]:
    """Read what the ended run left in the pipes, without waiting for writers that may still live."""
    for fd, buffer in buffers.items():
        os.set_blocking(fd, False)
        try:
            while (chunk := os.read(fd, 65536)) and len(buffer) <= cap:
                buffer += chunk[: cap + 1 - len(buffer)]
        except BlockingIOError:
            pass
    over = any(len(b) > cap for b in buffers.values())
    return _bytes(buffers), "output_limit" if over else None


def _bytes(buffers: dict[int, bytearray]) -> dict[int, bytes]:
    return {fd: bytes(b) for fd, b in buffers.items()}


def result(execution: Execution, pipes: Pipes, outputs: dict[int, bytes], reason: str | None, exit_code: int | None,
           started: float, cap: int) -> ExecutionResult:
    out, err, chan = outputs[pipes.out_r], outputs[pipes.err_r], outputs[pipes.chan_r]
    return ExecutionResult(execution.id, classify(reason, exit_code, err), exit_code, _text(out[:cap]),
                           _text(err[:cap]), round(time.monotonic() - started, 4),
                           truncated=max(len(out), len(err), len(chan)) > cap, channel=chan[:cap])


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class ProcessBackend(SandboxBackend):
    """rlimits and timeouts on a plain subprocess. UNISOLATED: host file system, network and uid.

    As root, each slot's processes are capped by a pids and memory cgroup (RLIMIT_NPROC does not
    apply to root)."""

    name = "process"
    isolated = False

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        super().__init__(cfg, slots, tag)
        self.python = os.path.realpath(cfg.python or getattr(sys, "_base_executable", sys.executable))
        self.cgroups: list[SlotCgroups | None] = [None] * slots

    def check(self) -> None:
        if self.cfg.max_processes and os.geteuid() == 0:
            try:
                self.cgroups = [SlotCgroups.create(f"{os.getpid()}-{self.tag}-p{slot}", self.cfg.memory_mb << 20,
                                                   self.cfg.max_processes) for slot in range(self.slots)]
            except (CgroupsMissing, OSError) as exc:
                raise SandboxUnavailable(f"sandbox.max_processes: {exc}; or set sandbox.max_processes=0") from None
        super().check()

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        started = time.monotonic()
        cgroup = self.cgroups[slot]
        workdir = tempfile.mkdtemp(prefix="sandbox-")
        try:
            with Pipes() as pipes:
                Path(workdir, "main.py").write_text(execution.code)
                proc = subprocess.Popen(self._argv(cgroup, workdir, pipes.chan_w), stdin=pipes.stdin_r,
                                        stdout=pipes.out_w, stderr=pipes.err_w, pass_fds=(pipes.chan_w,),
                                        cwd=workdir, env=ENV, start_new_session=True)
                pipes.close(*pipes.program_ends())
                pidfd = os.pidfd_open(proc.pid)
                try:
                    outputs, reason = pump(pipes, execution.stdin.encode(), pidfd, started + self.timeout(execution),
                                           self.cfg.max_output_bytes)
                finally:
                    os.close(pidfd)
                self._stop(proc, cgroup)
                return result(execution, pipes, outputs, reason, proc.returncode, started, self.cfg.max_output_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def close(self) -> None:
        for cgroup in self.cgroups:
            if cgroup is not None:
                cgroup.remove()

    def _argv(self, cgroup: SlotCgroups | None, workdir: str, chan: int) -> list[str]:
        main = os.path.join(workdir, "main.py")
        redirect = f"os.dup2({chan}, {CHANNEL_FD}); os.close({chan})\n" if chan != CHANNEL_FD else ""
        launcher = ("import os, resource, sys\n" + redirect +
                    f"for name, value in {rlimits(self.cfg, os.geteuid() != 0)!r}:\n"
                    "    resource.setrlimit(getattr(resource, name), (value, value))\n"
                    f"sys.argv = [{main!r}]\n"
                    f"exec(compile(open({main!r}).read(), {main!r}, 'exec'), {{'__name__': '__main__'}})\n")
        argv = [self.python, "-I", "-S", "-c", launcher]
        if cgroup is None:
            return argv
        enter = 'for f in $0; do echo $$ > "$f"; done && exec "$@"'
        return ["/bin/sh", "-c", enter, " ".join(cgroup.procs_files()), *argv]

    @staticmethod
    def _stop(proc: subprocess.Popen, cgroup: SlotCgroups | None) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if cgroup is not None:
            cgroup.kill_all()
