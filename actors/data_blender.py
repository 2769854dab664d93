"""DataBlender: streams mixed, filtered, packed batches to trainer shards, with provenance.

A plain class; the driver makes it a threaded Ray actor. A producer thread
prepares up to `prefetch_steps` steps ahead of the last one served (bounded,
so memory stays flat and nothing is materialised in full).

Contract:
- `batch(step, shard, num_shards)` returns samples shard, shard + num_shards, ...
  of the step's global batch: shards of one step are disjoint and together
  complete. Asking again for a served (step, shard) within `replay_window`
  returns the identical batch.
- `set_weights`, `add_source`, `remove_source` and `put` take effect at the
  first step not yet served, which they return; steps prepared beyond it are
  discarded and prepared again, so the stream stays a pure function of
  (config, change log). Each change is logged with that step.
- `state()` is a small snapshot at the served boundary; a replacement that
  `restore()`s it, over the same run directory, continues exactly.
- `setup(recover=True)` (what the supervisor's replacement does) restores from the
  snapshots the lost blender kept in RUN_DIR/<name>.sqlite: the newest, plus those of
  the replay window, so a step the lost one had served (to some shards only) is served
  again identically. Changes logged after a snapshot are applied again at their steps.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from runtime.core.config import DataConfig
from runtime.data.blend import Blend, EndOfData, StepBatch
from runtime.data.store import BlendStore
from runtime.core.errors import FactoryError
from runtime.core.metrics import BlenderMetrics


class ReplayWindowError(FactoryError):
    """A step older than the replay window was asked for again."""


class DataTimeout(FactoryError):
    """A step was not ready within data.batch_timeout_s."""


class DataBlender:
    """Blends `data` for one run: documents drawn by (seed, step), tokenised with the tokenizer at
    `tokenizer` (an HF model directory), provenance in RUN_DIR/<name>.sqlite."""

    def __init__(self, data: DataConfig, seed: int, run_dir: str, tokenizer: str, name: str = "blender"):
        self.data = data
        self.seed = seed
        self.run_dir = run_dir
        self.tokenizer_path = str(tokenizer)
        self.name = name
        self._cv = threading.Condition()
        self._produced: dict[int, StepBatch] = {}
        self._snapshots: dict[int, dict[str, Any]] = {}
        self._served = -1
        self._error: BaseException | None = None
        self._ended = False
        self._stopped = False

    def setup(self, recover: bool = False) -> dict[str, Any]:
        from transformers import AutoTokenizer

        if not self.run_dir:
            raise FactoryError("experiment.run_dir must be set before the blender starts (the driver sets it)")
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        self.store = BlendStore(Path(self.run_dir) / f"{self.name}.sqlite")
        self.blend = Blend(self.data, self.seed, tokenizer, self.store)
        self.metrics = BlenderMetrics(self.name)
        self._pending: list[dict[str, Any]] = []
        kept = self.store.snapshots() if recover else {}
        if kept:
            with self._cv:
                self._snapshots.update(kept)
                self._restore_at(max(kept))
                self._served = max(kept) - 1
        self._thread = threading.Thread(target=self._produce_loop, name="blender-producer", daemon=True)
        self._thread.start()
        return {"name": self.name, "sources": list(self.blend.weights), "recovered_at": max(kept) if kept else None}

    # ---- the stream ------------------------------------------------------

    def batch(self, step: int, shard: int = 0, num_shards: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + self.data.batch_timeout_s
        with self._cv:
            while step not in self._produced:
                self._raise_if_cannot_serve(step, deadline)
                self._cv.wait(timeout=max(0.01, deadline - time.monotonic()))
            if step > self._served:
                self._serve_through(step)
            return self._produced[step].shard(shard, num_shards)

    def _raise_if_cannot_serve(self, step: int, deadline: float) -> None:
        if self._error is not None:
            raise self._error
        if step < self.blend.step and step not in self._produced and step in self._snapshots:
            self._restore_at(step)  # served by a lost predecessor: produce it again, identically
            return
        if step <= self._served - self.data.replay_window or (step < self.blend.step and step <= self._served):
            raise ReplayWindowError(f"step {step} is outside the replay window ({self.data.replay_window} steps)")
        if self._ended and step >= self.blend.step:
            raise EndOfData(f"the blend ended before step {step}")
        if time.monotonic() > deadline:
            raise DataTimeout(f"step {step} not ready within {self.data.batch_timeout_s}s (data.batch_timeout_s)")

    def _serve_through(self, step: int) -> None:
        for s in range(self._served + 1, step + 1):
            batch = self._produced[s]
            self.store.save_manifest(s, batch.manifest)
            self.metrics.served(batch.manifest)
        self._served = step
        self.store.save_snapshot(step + 1, self._snapshot_at(step + 1), keep=self.data.replay_window + 1)
        for old in [s for s in self._produced if s <= step - self.data.replay_window]:
            self._produced.pop(old)
            self._snapshots.pop(old, None)
        self._cv.notify_all()

    # ---- changes ---------------------------------------------------------

    def set_weights(self, weights: dict[str, float]) -> int:
        return self._change("set_weights", dict(weights))

    def add_source(self, spec: dict[str, Any]) -> int:
        return self._change("add_source", dict(spec))

    def remove_source(self, name: str) -> int:
        return self._change("remove_source", name)

    def put(self, source: str, docs: list[dict[str, Any]]) -> int:
        """Feed a live source; the documents are readable from the returned step on."""
        with self._cv:
            at = self._served + 1
            self._rollback(at)
            self.blend.apply("put", {"source": source, "count": len(docs)})
            self.store.put_live(source, docs, at)
            self._log(at, "put", {"source": source, "count": len(docs)})
        return at

    def _change(self, kind: str, payload: Any) -> int:
        with self._cv:
            at = self._served + 1
            self._rollback(at)
            self.blend.apply(kind, payload)
            self._log(at, kind, payload)
        return at

    def _log(self, at: int, kind: str, payload: Any) -> None:
        self.store.log_change(at, kind, payload)
        self._ended = False
        self._cv.notify_all()

    def _rollback(self, at: int) -> None:
        if self.blend.step > at:
            self.blend.restore(self._snapshots[at])
        for s in [s for s in self._produced if s >= at]:
            self._produced.pop(s)
            self._snapshots.pop(s, None)

    # ---- snapshots -------------------------------------------------------

    def state(self, step: int | None = None) -> dict[str, Any]:
        """Snapshot at the served boundary (or before `step`, within the replay window): what a
        replacement needs to continue exactly from there."""
        with self._cv:
            at = self._served + 1 if step is None else step
            if at != self._served + 1 and at not in self._snapshots:
                raise ReplayWindowError(f"no snapshot before step {at} is kept (data.replay_window)")
            return self._snapshot_at(at)

    def restore(self, state: dict[str, Any]) -> None:
        with self._cv:
            self._produced.clear()
            self._snapshots.clear()
            self._restore(state, pending=[])
            self._served = state["step"] - 1

    def _restore_at(self, step: int) -> None:
        """Go back to the kept snapshot of `step`; changes logged after it wait to be applied at their steps."""
        state = self._snapshots[step]
        for s in [s for s in self._produced if s >= step]:
            self._produced.pop(s)
        self._restore(state, pending=self.store.changes()[len(state["log"]):])

    def _restore(self, state: dict[str, Any], pending: list[dict[str, Any]]) -> None:
        self.blend.restore(state)
        self._pending = pending
        self._ended, self._error = False, None
        self._cv.notify_all()

    def _snapshot_at(self, step: int) -> dict[str, Any]:
        return self._snapshots[step] if step in self._snapshots else self.blend.snapshot()

    # ---- inspection ------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._cv:
            return {"name": self.name, "pid": os.getpid(), "served": self._served, "prepared": self.blend.step,
                    "error": repr(self._error) if self._error else None}

    def sources(self) -> list[str]:
        """The names of the blend's sources now: the config's and those added since."""
        with self._cv:
            return list(self.blend.specs)

    def record_losses(self, step: int, losses: dict[int, float]) -> None:
        """Trainers report each sample's loss (by its index in the step), for `factory trace`."""
        self.store.record_losses(step, losses)

    def changes(self) -> list[dict[str, Any]]:
        return self.store.changes()

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self.store.close()

    # ---- producer --------------------------------------------------------

    def _produce_loop(self) -> None:
        with self._cv:
            while True:
                while not self._stopped and (self._error or self._ended or
                                             self.blend.step > self._served + self.data.prefetch_steps):
                    self._cv.wait()
                if self._stopped:
                    return
                self._produce_one()
                self._cv.notify_all()

    def _produce_one(self) -> None:
        while self._pending and self._pending[0]["step"] <= self.blend.step:
            change = self._pending.pop(0)
            self.blend.apply(change["kind"], change["payload"])
        snapshot = self.blend.snapshot()
        try:
            batch = self.blend.produce()
        except EndOfData:
            self._ended = True
            self.blend.restore(snapshot)
            return
        except Exception as exc:  # reported to every batch() caller, with its message (file and line)
            self._error = exc
            return
        self._snapshots[batch.step] = snapshot
        self._produced[batch.step] = batch
        self.metrics.prepared(len(self._produced))
