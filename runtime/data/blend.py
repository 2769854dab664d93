"""The deterministic core of the blender: (config, change log, step) -> that step's global batch.

Each sample comes from one source, drawn with the mixture weights by an RNG
seeded with (seed, step), so no RNG state needs saving. A snapshot is small:
the next step, each source's cursor and pending pieces, which finite sources
ended, and the change log. Dedup keys live in the store, stamped with the step
that first saw them, so restoring to step s forgets exactly what came after.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.core.config import DataConfig, SourceConfig
from runtime.data.packing import Packer, Sample
from runtime.data.sources import Source, make_source
from runtime.data.store import BlendStore
from runtime.data.transforms import Filters, SeenKeys
from runtime.core.errors import FactoryError

FINITE = ("jsonl", "parquet")
MAX_CONSECUTIVE_DROPS = 10_000


class EndOfData(FactoryError):
    """Every source with a non-zero weight has ended."""


@dataclass
class StepBatch:
    step: int
    tokens: np.ndarray
    segment_ids: np.ndarray
    manifest: dict[str, Any]
    documents: list[dict[str, str]] | None = None
    """Unpacked streams (data.pack false): each sample's source, id and text; tokens are empty."""

    def shard(self, shard: int, num_shards: int) -> dict[str, Any]:
        """Samples shard, shard + num_shards, ...: disjoint across shards, together the whole step."""
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} is not in [0, {num_shards})")
        rows = list(range(shard, len(self.manifest["samples"]), num_shards))
        part = {"step": self.step, "shard": shard, "num_shards": num_shards, "sample_index": rows,
                "manifest": [self.manifest["samples"][i] for i in rows]}
        if self.documents is not None:
            return {**part, "documents": [self.documents[i] for i in rows]}
        return {**part, "input_ids": self.tokens[rows], "segment_ids": self.segment_ids[rows]}


class Blend:
    def __init__(self, cfg: DataConfig, seed: int, tokenizer, store: BlendStore):
        self.cfg = cfg
        self.seed = seed
        self.store = store
        eos = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        self.seen = SeenKeys()
        self.filters = Filters(cfg, self.seen, seed)
        self._reset()

    def _reset(self) -> None:
        self.step = 0
        self.log: list[dict[str, Any]] = []
        self.specs: dict[str, SourceConfig] = {}
        self.weights: dict[str, float] = {}
        self.sources: dict[str, Source] = {}
        self.cursors: dict[str, Any] = {}
        self.packers: dict[str, Packer] = {}
        self.exhausted: set[str] = set()
        for spec in self.cfg.sources:
            self._add(spec)

    # ---- changes ---------------------------------------------------------

    def apply(self, kind: str, payload: Any) -> None:
        """Apply a change from the next step on, and log it with that step."""
        getattr(self, f"_change_{kind}")(payload)
        self.log.append({"step": self.step, "kind": kind, "payload": payload})

    def _change_set_weights(self, weights: dict[str, float]) -> None:
        unknown = set(weights) - set(self.weights)
        if unknown or any(w < 0 for w in weights.values()):
            raise ValueError(f"set_weights: unknown sources {sorted(unknown)} or a negative weight in {weights}")
        self.weights.update(weights)

    def _change_add_source(self, spec: dict[str, Any]) -> None:
        cfg = SourceConfig.model_validate(spec)
        if cfg.name in self.specs:
            raise ValueError(f"add_source: a source named {cfg.name} exists")
        self._add(cfg)

    def _change_remove_source(self, name: str) -> None:
        if name not in self.weights:
            raise ValueError(f"remove_source: no source named {name}")
        self.weights[name] = 0.0

    def _change_put(self, payload: dict[str, Any]) -> None:
        if self.specs.get(payload["source"], None) is None or self.specs[payload["source"]].type != "live":
            raise ValueError(f"put: {payload['source']} is not a live source")

    def _add(self, spec: SourceConfig) -> None:
        self.specs[spec.name] = spec
        self.weights[spec.name] = spec.weight
        self.sources[spec.name] = make_source(spec, self.seed, self.store, self.cfg.skip_bad_lines)
        self.cursors[spec.name] = self.sources[spec.name].start()
        self.packers[spec.name] = Packer(spec.name, self.cfg.seq_len, self.pad_id, self.tokenize)

    # ---- snapshots -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"step": self.step, "cursors": dict(self.cursors), "exhausted": sorted(self.exhausted),
                "pending": {n: p.state() for n, p in self.packers.items()}, "log": list(self.log)}

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue exactly from `snap`: rebuild sources from config + log, then cursors and dedup state."""
        self._reset()
        for change in snap["log"]:
            self.step = change["step"]
            self.apply(change["kind"], change["payload"])
        self.step = snap["step"]
        self.cursors.update(snap["cursors"])
        self.exhausted = set(snap["exhausted"])
        for name, state in snap["pending"].items():
            self.packers[name].load(state)
        self.store.forget_from(self.step)
        self.seen.first_seen = self.store.seen_before(self.step)
        self.seen.added = []

    # ---- producing -------------------------------------------------------

    def produce(self) -> StepBatch:
        step, drops = self.step, collections.Counter()
        rng = random.Random(f"{self.seed}:mix:{step}")
        samples: list[Sample] = []
        unavailable: set[str] = set()
        while len(samples) < self.cfg.batch_size:
            names = [n for n, w in self.weights.items() if w > 0 and n not in self.exhausted | unavailable]
            if not names:
                break
            name = rng.choices(names, weights=[self.weights[n] for n in names])[0]
            sample = self._next_sample(name, step, drops)
            if sample is None:
                (self.exhausted if self.specs[name].type in FINITE else unavailable).add(name)
                continue
            samples.append(sample)
        self.store.add_seen(self.seen.drain_added())
        self.step += 1
        if not samples:
            raise EndOfData(f"step {step}: every source with weight has ended")
        manifest = self._manifest(step, samples, drops)
        if not self.cfg.pack:
            documents = [{"source": s.source, "id": s.pieces[0]["doc_id"], "text": s.text} for s in samples]
            return StepBatch(step, np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int32), manifest, documents)
        return StepBatch(step, np.array([s.tokens for s in samples], dtype=np.int32),
                         np.array([s.segment_ids for s in samples], dtype=np.int32), manifest)

    def _next_sample(self, name: str, step: int, drops: collections.Counter) -> Sample | None:
        documents = self._documents(name, step, drops)
        if self.cfg.pack:
            return self.packers[name].next_sample(documents)
        doc = next(documents, None)
        return None if doc is None else Sample.whole(doc)

    def _documents(self, name: str, step: int, drops: collections.Counter):
        chain = self.specs[name].transforms if self.specs[name].transforms is not None else self.cfg.transforms
        dropped = collections.Counter()
        for doc, after in self.sources[name].read(self.cursors[name], step):
            self.cursors[name] = after
            reason = "malformed" if doc is None else self.filters.apply(chain, doc, step)
            if not reason:
                yield doc
                dropped.clear()
                continue
            drops[reason] += 1
            dropped[reason] += 1
            if sum(dropped.values()) >= MAX_CONSECUTIVE_DROPS:
                raise FactoryError(f"source {name}: {MAX_CONSECUTIVE_DROPS} documents in a row dropped "
                                   f"({dict(dropped)}); is it exhausted of new documents, or are its filters wrong?")

    def _manifest(self, step: int, samples: list[Sample], drops: collections.Counter) -> dict[str, Any]:
        total = sum(w for w in self.weights.values()) or 1.0
        tokens = collections.Counter()
        for s in samples:
            tokens[s.source] += sum(p["length"] for p in s.pieces) if self.cfg.pack else 0
        last = ["tokenize", "pack"] if self.cfg.pack else []
        return {"step": step, "weights": {n: w / total for n, w in self.weights.items()},
                "samples": [{"source": s.source, "pieces": s.pieces} for s in samples],
                "tokens_by_source": dict(+tokens), "drops": dict(drops),
                "documents_by_source": dict(collections.Counter(s.source for s in samples)),
                "transforms": {n: (sp.transforms if sp.transforms is not None else self.cfg.transforms) + last
                               for n, sp in self.specs.items()}}


def document_ids(manifest: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(s["source"], p["doc_id"], p["offset"]) for s in manifest["samples"] for p in s["pieces"]]
