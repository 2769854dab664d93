"""Filters of the blend. Each returns the reason it drops a document, or None to keep it.

Dedup state is shared across sources and remembers the step each key was first
seen, so a rollback to step s forgets exactly what steps >= s added.
"""

from __future__ import annotations

import hashlib
import unicodedata
import zlib

import numpy as np

from runtime.core.config import DataConfig
from runtime.data.sources import Document

MERSENNE = (1 << 61) - 1


class SeenKeys:
    """Keys (content hashes, LSH bands) with the step they were first seen at."""

    def __init__(self):
        self.first_seen: dict[str, int] = {}
        self.added: list[tuple[str, int]] = []

    def check_and_add(self, keys: list[str], step: int) -> bool:
        """True if any key was seen before; otherwise records all of them."""
        if any(k in self.first_seen for k in keys):
            return True
        for key in keys:
            self.first_seen[key] = step
            self.added.append((key, step))
        return False

    def forget_from(self, step: int) -> None:
        self.first_seen = {k: s for k, s in self.first_seen.items() if s < step}

    def drain_added(self) -> list[tuple[str, int]]:
        added, self.added = self.added, []
        return added


class Filters:
    def __init__(self, cfg: DataConfig, seen: SeenKeys, seed: int):
        self.cfg = cfg
        self.seen = seen
        rng = np.random.default_rng(seed)
        n = cfg.near_dedup_bands * cfg.near_dedup_rows
        self.perm_a = rng.integers(1, MERSENNE, size=n, dtype=np.uint64)
        self.perm_b = rng.integers(0, MERSENNE, size=n, dtype=np.uint64)

    def apply(self, chain: list[str], doc: Document, step: int) -> str | None:
        for name in chain:
            reason = getattr(self, name)(doc, step)
            if reason:
                return reason
        return None

    def license(self, doc: Document, step: int) -> str | None:
        if doc.license is None:
            return None if self.cfg.allow_missing_license else "license"
        return None if not self.cfg.license_allow or doc.license in self.cfg.license_allow else "license"

    def dedup(self, doc: Document, step: int) -> str | None:
        key = "x:" + hashlib.sha1(" ".join(doc.text.split()).encode()).hexdigest()
        return "duplicate" if self.seen.check_and_add([key], step) else None

    def near_dedup(self, doc: Document, step: int) -> str | None:
        return "near_duplicate" if self.seen.check_and_add(self.band_keys(doc.text), step) else None

    def length(self, doc: Document, step: int) -> str | None:
        n = len(doc.text)
        if n < self.cfg.min_chars:
            return "too_short"
        if n > self.cfg.max_chars:
            return "too_long"
        odd = sum(1 for ch in doc.text if not (ch.isalnum() or ch.isspace() or unicodedata.category(ch)[0] == "P"
                                               or ch in "+-*/=<>^|&%$#@~`"))
        return "non_text" if n and odd / n > self.cfg.max_non_text_fraction else None

    def band_keys(self, text: str, k: int = 5) -> list[str]:
        """MinHash over character k-grams, cut into LSH band keys."""
        norm = " ".join(text.lower().split())
        grams = {norm[i : i + k] for i in range(max(1, len(norm) - k + 1))}
        hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
        signature = ((hashes[None, :] * self.perm_a[:, None] + self.perm_b[:, None]) % MERSENNE).min(axis=1)
        rows = self.cfg.near_dedup_rows
        return [f"m{b}:" + hashlib.sha1(signature[b * rows : (b + 1) * rows].tobytes()).hexdigest()[:16]
                for b in range(self.cfg.near_dedup_bands)]
