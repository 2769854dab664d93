"""Preference pairs (prompt, chosen, rejected) as JSONL: what the playground exports and DPO reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.core.errors import FactoryError
from runtime.core.jsonl import objects


class PreferenceFileError(FactoryError):
    """A preference-pair line is malformed; the message names the file and the line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    for where, row in objects(path, PreferenceFileError):
        pair = PreferencePair(*(row.get(key) for key in ("prompt", "chosen", "rejected")))
        if not all(isinstance(v, str) for v in (pair.prompt, pair.chosen, pair.rejected)):
            raise PreferenceFileError(f"{where}: expected {{prompt, chosen, rejected}}, each a string")
        pairs.append(pair)
    return pairs
