"""Reading JSONL files whose every line is a JSON object, with errors that name `file:line`."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.core.errors import FactoryError


def objects(path: str | Path, error: type[FactoryError]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, object) per non-blank line (gzipped when the name ends in .gz). A missing file,
    a line that is not JSON or not an object raises `error` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield f"{path}:{number}", parse_object(line, f"{path}:{number}", error)


def parse_object(line: str, where: str, error: type[FactoryError]) -> dict[str, Any]:
    """One JSON object; `error` naming `where` when it is not JSON or not an object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row
