"""Weight versions in memory, and their chunked wire form. Ray-free.

Versions only move forward: publishing a version not newer than the latest is
refused. A store keeps the newest `keep` versions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from runtime.core.errors import FactoryError, StaleVersionError

DEFAULT_CHUNK = 4 << 20


def shareable(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The form to `ray.put` a version in: numpy arrays where the dtype allows, which every server
    then reads zero-copy from the object store (torch tensors are copied on every read)."""
    return {name: t.detach().cpu().numpy() if t.dtype != torch.bfloat16 else t.detach().cpu()
            for name, t in state.items()}


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor over `value` without copying. Arrays from Ray's object store are read-only; the
    tensor aliases them anyway, which is safe because its readers (vLLM's reload, the chunker)
    only read it."""
    import warnings

    import numpy as np

    if isinstance(value, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(value)
    return value


class VersionStore:
    def __init__(self, keep: int = 2):
        self.keep = keep
        self.versions: collections.OrderedDict[int, Mapping[str, torch.Tensor]] = collections.OrderedDict()

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> None:
        if self.versions and version <= self.latest():
            raise StaleVersionError(f"version {version} is not newer than {self.latest()}")
        self.versions[version] = state
        while len(self.versions) > self.keep:
            self.versions.popitem(last=False)

    def latest(self) -> int:
        return next(reversed(self.versions)) if self.versions else -1

    def get(self, version: int | None = None) -> tuple[int, Mapping[str, torch.Tensor]]:
        version = self.latest() if version is None else version
        if version not in self.versions:
            raise FactoryError(f"weight version {version} is not kept (kept: {list(self.versions)})")
        return version, self.versions[version]


def to_chunks(version: int, state: Mapping[str, torch.Tensor], chunk_bytes: int = DEFAULT_CHUNK) -> Iterator[dict[str, Any]]:
    """Each tensor's raw bytes in slices of at most `chunk_bytes`, tensors in name order."""
    for name in sorted(state):
        tensor = as_tensor(state[name]).detach().contiguous().cpu()
        raw = memoryview(tensor.view(torch.uint8).numpy()).cast("B") if tensor.numel() else memoryview(b"")
        for offset in range(0, max(len(raw), 1), chunk_bytes):
            yield {"version": version, "name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                   "shape": list(tensor.shape), "offset": offset, "nbytes": len(raw),
                   "data": bytes(raw[offset : offset + chunk_bytes])}


def from_chunks(chunks: Iterable[Any]) -> tuple[int, dict[str, torch.Tensor]]:
    """Reassemble (version, state) from chunks (dicts or TensorChunk messages) in stream order."""
    buffers: dict[str, bytearray] = {}
    meta: dict[str, tuple[str, list[int], int]] = {}
    version = None
    for c in chunks:
        get = c.get if isinstance(c, dict) else lambda k, c=c: getattr(c, k)
        name, version = get("name"), get("version") if version is None else version
        if get("version") != version:
            raise FactoryError(f"a weight stream mixed versions {version} and {get('version')}")
        buf = buffers.setdefault(name, bytearray(get("nbytes")))
        data = get("data")
        buf[get("offset") : get("offset") + len(data)] = data
        meta[name] = (get("dtype"), list(get("shape")), get("nbytes"))
    state = {}
    for name, (dtype, shape, nbytes) in meta.items():
        flat = torch.frombuffer(buffers[name], dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        state[name] = flat.view(getattr(torch, dtype)).reshape(shape).clone()
    if version is None:
        raise FactoryError("an empty weight stream")
    return version, state
