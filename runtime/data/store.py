"""The blender's SQLite file under the run directory: step manifests, dedup keys, live
documents, the change log and the latest snapshot. A replacement blender opens the same file."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (step INTEGER PRIMARY KEY, manifest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (step INTEGER, sample INTEGER, source TEXT, doc_id TEXT, offset INTEGER,
                                      length INTEGER);
CREATE INDEX IF NOT EXISTS documents_step ON documents (step);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, step INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS live (source TEXT, idx INTEGER, step INTEGER, doc TEXT, PRIMARY KEY (source, idx));
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER, kind TEXT, payload TEXT);
CREATE TABLE IF NOT EXISTS snapshots (step INTEGER PRIMARY KEY, state TEXT);
CREATE TABLE IF NOT EXISTS sample_losses (step INTEGER, sample INTEGER, loss REAL, PRIMARY KEY (step, sample));
"""


class BlendStore:
    """The one owner of the blender's schema; `read_only` opens a finished or running run's file for
    `factory trace` without writing to it."""

    def __init__(self, path: Path | str, read_only: bool = False):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.read_only = read_only
        if read_only:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def step_documents(self, step: int) -> list[tuple[int, str, str, int, int]]:
        """(sample, source, doc_id, offset, length) of every piece of `step`, in sample order."""
        with self.lock:
            return self.db.execute("SELECT sample, source, doc_id, offset, length FROM documents WHERE step = ? "
                                   "ORDER BY sample, rowid", (step,)).fetchall()

    def last_step(self) -> int | None:
        with self.lock:
            return self.db.execute("SELECT MAX(step) FROM manifests").fetchone()[0]

    def highest_losses(self, step: int, top: int) -> list[tuple[int, float]]:
        """(sample, loss) of `step`'s `top` highest-loss samples, as the trainers reported them."""
        with self.lock:
            return self.db.execute("SELECT sample, loss FROM sample_losses WHERE step = ? ORDER BY loss DESC LIMIT ?",
                                   (step, top)).fetchall()

    def add_seen(self, rows: list[tuple[str, int]]) -> None:
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", rows)

    def seen_before(self, step: int) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT key, step FROM seen WHERE step < ?", (step,)))

    def forget_from(self, step: int) -> None:
        """Drop what steps >= `step` recorded: they will be produced again."""
        with self.lock:
            self.db.execute("DELETE FROM seen WHERE step >= ?", (step,))

    def put_live(self, source: str, docs: list[dict], step: int) -> None:
        with self.lock:
            start = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM live WHERE source = ?", (source,)).fetchone()[0]
            self.db.executemany("INSERT INTO live VALUES (?, ?, ?, ?)",
                                [(source, start + i, step, json.dumps(d)) for i, d in enumerate(docs)])

    def live_docs(self, source: str, start: int, step: int) -> Iterator[tuple[int, dict]]:
        with self.lock:
            rows = self.db.execute("SELECT idx, doc FROM live WHERE source = ? AND idx >= ? AND step <= ? ORDER BY idx",
                                   (source, start, step)).fetchall()
        for idx, doc in rows:
            yield idx, json.loads(doc)

    def log_change(self, step: int, kind: str, payload: Any) -> None:
        with self.lock:
            self.db.execute("INSERT INTO changes (step, kind, payload) VALUES (?, ?, ?)", (step, kind, json.dumps(payload)))

    def changes(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT step, kind, payload FROM changes ORDER BY seq").fetchall()
        return [{"step": s, "kind": k, "payload": json.loads(p)} for s, k, p in rows]

    def save_manifest(self, step: int, manifest: dict[str, Any]) -> None:
        rows = [(step, i, s["source"], p["doc_id"], p["offset"], p["length"])
                for i, s in enumerate(manifest["samples"]) for p in s["pieces"]]
        with self.lock:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO manifests VALUES (?, ?)", (step, json.dumps(manifest)))
            self.db.execute("DELETE FROM documents WHERE step = ?", (step,))
            self.db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("COMMIT")

    def manifest(self, step: int) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT manifest FROM manifests WHERE step = ?", (step,)).fetchone()
        return json.loads(row[0]) if row else None

    def record_losses(self, step: int, losses: dict[int, float]) -> None:
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO sample_losses VALUES (?, ?, ?)",
                                [(step, int(i), float(loss)) for i, loss in losses.items()])

    def save_snapshot(self, step: int, state: dict[str, Any], keep: int = 1) -> None:
        """The blend's state before `step`; the newest `keep` are kept (a replacement can replay them)."""
        with self.lock:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (step, json.dumps(state)))
            self.db.execute("DELETE FROM snapshots WHERE step <= ?", (step - keep,))
            self.db.execute("COMMIT")

    def snapshots(self) -> dict[int, dict[str, Any]]:
        """Kept snapshots by step, for a replacement blender."""
        with self.lock:
            rows = self.db.execute("SELECT step, state FROM snapshots ORDER BY step").fetchall()
        return {step: json.loads(state) for step, state in rows}

    def close(self) -> None:
        """Fold the write-ahead log into the file first, so the .sqlite alone holds every step."""
        with self.lock:
            if not self.read_only:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
