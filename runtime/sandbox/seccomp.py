"""The seccomp filter of every sandboxed process: deny what code tests never need.

Built with libseccomp (through pyseccomp) as a BPF program that bubblewrap
loads (`--seccomp FD`) just before it starts the slot's runner; every process
of the slot inherits it and cannot remove it. Denied calls fail with EPERM
(clone3 with ENOSYS, so the C library falls back to clone, whose flags the
filter can see).
"""

from __future__ import annotations

import errno
import os

from runtime.sandbox.base import SandboxUnavailable

DENIED = (
    # namespaces and mounts: no nested user namespace, no new view of the system
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # reading or steering other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    # kernel surfaces
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "fanotify_init",
    "quotactl", "swapon", "swapoff", "reboot", "syslog", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "personality", "vhangup",
)
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""


def filter_fd() -> int:
    """A memfd holding the BPF program, positioned at its start (for bwrap's --seccomp)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:
        raise SandboxUnavailable(f"seccomp: libseccomp is not usable ({exc}); install pyseccomp and libseccomp2") from None
    rules = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED:
        try:
            rules.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):
            continue  # not a system call on this architecture
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:
        rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    fd = os.memfd_create("seccomp")
    with os.fdopen(os.dup(fd), "wb") as out:
        rules.export_bpf(out)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
