"""Preference pairs (prompt, chosen, rejected) as JSONL: what the playground exports and DPO reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FactoryError


class PreferenceFileError(FactoryError):
    """A preference-pair line is malformed; the message names the file and the line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = PreferencePair(row["prompt"], row["chosen"], row["rejected"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PreferenceFileError(f"{path}:{number}: expected {{prompt, chosen, rejected}}: {exc!r}") from None
        if not all(isinstance(v, str) for v in (pair.prompt, pair.chosen, pair.rejected)):
            raise PreferenceFileError(f"{path}:{number}: prompt, chosen and rejected must be strings")
        pairs.append(pair)
    return pairs
