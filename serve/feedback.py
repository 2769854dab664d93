"""Playground feedback: thumbs up/down with a comment, keyed by version and prompt, in SQLite under
the run directory, exported as preference pairs (prompt, chosen, rejected) for DPO (rl/preferences.py)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL, model TEXT,
    version TEXT, prompt TEXT, response TEXT, rating INTEGER CHECK (rating IN (-1, 1)), comment TEXT)"""


class FeedbackStore:
    def __init__(self, path: Path | str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute(SCHEMA)
        self.lock = threading.Lock()

    def add(self, model: str, version: str, prompt: str, response: str, rating: int, comment: str = "") -> int:
        with self.lock:
            cur = self.db.execute("INSERT INTO feedback (created, model, version, prompt, response, rating, comment) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (time.time(), model, version, prompt, response,
                                                                  rating, comment))
            return cur.lastrowid

    def pairs(self) -> list[dict]:
        """Every (liked, disliked) pair of responses to the same prompt."""
        with self.lock:
            rows = self.db.execute("SELECT prompt, response, rating, version, comment FROM feedback ORDER BY id").fetchall()
        out = []
        for prompt, group in itertools.groupby(sorted(rows, key=lambda r: r[0]), key=lambda r: r[0]):
            group = list(group)
            for good, bad in itertools.product([r for r in group if r[2] == 1], [r for r in group if r[2] == -1]):
                out.append({"prompt": prompt, "chosen": good[1], "rejected": bad[1], "chosen_version": good[3],
                            "rejected_version": bad[3], "comments": [c for c in (good[4], bad[4]) if c]})
        return out

    def export_jsonl(self) -> str:
        return "".join(json.dumps(p) + "\n" for p in self.pairs())
