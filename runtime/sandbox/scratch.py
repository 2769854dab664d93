"""A slot's one writable file system: a tmpfs mounted by the (root) worker with size and inode limits.

bubblewrap's own `--tmpfs` takes a size but no inode limit, so as root the
worker mounts `tmpfs -o size=..,nr_inodes=..` under /run/factory-sandbox/, owned
by the sandbox uid, and the slot binds it at /work. A fresh one is mounted for
every runner; ones left by a worker process that no longer exists are unmounted
when a new one is made.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

ROOT = Path("/run/factory-sandbox")
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


class Scratch:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def mount(cls, name: str, size_bytes: int, max_files: int, uid: int) -> Scratch:
        remove_stale()
        path = public_root() / name
        unmount(path)
        path.mkdir(mode=0o700, exist_ok=True)
        options = f"size={size_bytes},nr_inodes={max_files},mode=0700,uid={uid},gid={uid}"
        if _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) != 0:
            raise OSError(ctypes.get_errno(), f"cannot mount the sandbox scratch at {path}")
        return cls(path)

    def remove(self) -> None:
        unmount(self.path)


def public_root() -> Path:
    """ROOT, made 0711: the sandbox uid passes through to what is meant for it and lists nothing."""
    ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
    ROOT.chmod(0o711)
    return ROOT


def unmount(path: Path) -> None:
    if os.path.ismount(path):
        _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        path.rmdir()
    except OSError:
        pass


def remove_stale() -> None:
    """Unmount the scratch of every worker process that no longer exists."""
    for path in public_root().glob("*"):
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            unmount(path)
