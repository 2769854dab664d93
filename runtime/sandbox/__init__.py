"""Running untrusted Python: backends behind one interface, chosen by `sandbox.backend`.

Threat model: the program is hostile (model output written to escape, to exhaust
the host, or to claim a reward it did not earn). The `bubblewrap` backend
guarantees the following; the probe of runtime/sandbox/selftest.py (run in CI by
tests/unit/test_sandbox.py, and on any machine by `factory sandbox selftest`) or the
test that shows each is named in brackets:

- never host root: as root, the worker drops to `sandbox.run_as_uid` (no groups,
  no_new_privs) before bubblewrap starts, so the sandbox's user namespace maps an
  unprivileged host uid, with no capabilities [not_root,
  test_no_process_of_a_slot_runs_as_host_root]; root-owned host files, /proc/sys
  included, are not writable [sysctl_write];
- seccomp denies what code tests never need: namespaces (unshare, setns, clone with
  CLONE_NEW*, clone3), mounts, ptrace and process_vm_*, keyctl, bpf,
  perf_event_open, io_uring, userfaultfd, module and clock calls
  (runtime/sandbox/seccomp.py) [denied_syscalls];
- new pid, net, ipc, uts, mount and cgroup namespaces; no network (a downed
  loopback) [test_no_network];
- the file system holds only /usr/lib, the interpreter and its standard library
  (site-packages hidden), read-only, on a read-only root [test_project_files_are_not_readable,
  test_nothing_is_written_outside_the_tmpfs, test_only_the_standard_library_is_importable];
  host information under /proc is masked [host_information]; /dev is read-only
  [devices_read_only]; the only writable place is one tmpfs of `tmpfs_mb` with at most
  `max_files` inodes at /work, /tmp pointing into it [scratch_size, scratch_files];
- memory: a memory cgroup per slot caps everything the slot holds, tmpfs and memfd
  pages included, at `memory_mb` (+ the runner's own) [memfd_memory,
  test_memory_bomb_is_contained]; RLIMIT_AS, CPU, FSIZE, NOFILE and CORE per
  execution; the OOM score is pinned at 1000 and cannot be lowered [oom_score];
- processes: a pids cgroup per slot caps them at `max_processes` [test_fork_bomb_is_contained];
- nothing of one execution reaches the next: each runs in a fresh child of the
  slot's runner (pid 1 of the sandbox, unkillable from inside, not dumpable so its
  memory and descriptors are unreadable [runner_unreachable]); when it ends, at its
  timeout or at the output cap, every other process of the sandbox is killed and
  reaped, including ones that escaped with setsid [leftover_processes,
  test_a_child_that_outlives_its_parent_is_killed], and the scratch is emptied
  [scratch_wiped]; a slot that cannot be cleaned, or whose runner misses the
  deadline, is killed whole and restarted;
- stdin is fed without blocking, so a program that never reads it still times out
  [test_unread_stdin_does_not_block_the_timeout]; stdout and stderr are captured up
  to `max_output_bytes` each, then the run is stopped and reported `output_limit`
  [test_output_flood_is_truncated];
- the result channel (fd 3) carries data for a trusted judge; verdicts are never
  decided inside (rl/rewards/code_tests.py; tests/unit/test_reward_forgery.py).

Not guaranteed: protection from kernel exploits (this is not a VM); CPU fairness
between concurrent executions; secrecy of what /usr/lib holds; that a program's own
report of itself is true (which is why judges compare data outside).

The `process` backend applies the same rlimits and timeouts to a plain subprocess
and is labelled unisolated: it has the host's file system, network and uid. The
`grpc` backend forwards to a SandboxService; its isolation is the remote's.

Every backend fails closed: `check()` starts what it needs and runs a probe, and
raises SandboxUnavailable naming what is missing rather than run code unisolated.
"""

from __future__ import annotations

from runtime.core.config import SandboxConfig
from runtime.sandbox.base import (Execution, ExecutionResult, SandboxBackend, SandboxUnavailable, Status,
                                  classify)

__all__ = ["Execution", "ExecutionResult", "SandboxBackend", "SandboxUnavailable", "Status", "classify",
           "make_backend"]


def make_backend(cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox") -> SandboxBackend:
    """The backend `cfg.backend` names; call `check()` before running anything."""
    if cfg.backend == "bubblewrap":
        from runtime.sandbox.bubblewrap import BubblewrapBackend

        return BubblewrapBackend(cfg, slots, tag)
    if cfg.backend == "process":
        from runtime.sandbox.local import ProcessBackend

        return ProcessBackend(cfg, slots, tag)
    from runtime.sandbox.remote import GrpcBackend

    return GrpcBackend(cfg, slots, tag)
