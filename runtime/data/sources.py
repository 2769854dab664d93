"""Data sources of the blend: each reads documents in a fixed order from a resumable cursor.

A cursor is a small JSON-able value; `read(cursor)` yields (document, cursor
after it), so a blender can stop anywhere and a replacement resume exactly.
"""

from __future__ import annotations

import glob
import importlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from runtime.core.config import SourceConfig
from runtime.core.errors import FactoryError


class DataFileError(FactoryError):
    """A data file line is malformed; the message names the file and the line."""


@dataclass
class Document:
    source: str
    id: str
    text: str
    license: str | None = None


GENERATORS: dict[str, str] = {
    "function_examples": "rl.procedural:function_example",
    "linear_tasks": "rl.procedural:task_record",
    "arithmetic_tasks": "runtime.data.corpus:arithmetic_task",
    "python_functions": "runtime.data.corpus:python_function",
    "arithmetic": "runtime.data.corpus:arithmetic",
    "corpus": "runtime.data.corpus:mixed",
}
"""Named generators and where they live. A source's `generator` is one of these names or any
importable `module:function` taking a random.Random and returning a document (text, or a dict
that becomes JSON). Resolved by import, so this layer knows no task family."""


def generator(name: str, source: str) -> Callable[[random.Random], str]:
    """The document function `name` stands for; FactoryError naming the source if it cannot be had."""
    module, _, attr = GENERATORS.get(name, name).partition(":")
    hint = f"known: {', '.join(GENERATORS)}; or an importable module:function"
    if not module or not attr:
        raise FactoryError(f"source {source}: unknown generator {name} ({hint})")
    try:
        make = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise FactoryError(f"source {source}: generator {name}: {exc} ({hint})") from None
    if not callable(make):
        raise FactoryError(f"source {source}: generator {name} is not callable ({hint})")
    return lambda rng: _text(make(rng))


def _text(document: str | dict) -> str:
    return document if isinstance(document, str) else json.dumps(document)


class Source:
    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        self.name = cfg.name

    def start(self) -> Any:
        """The cursor of the first document."""
        return 0

    def read(self, cursor: Any, step: int) -> Iterator[tuple[Document | None, Any]]:
        """Documents from `cursor` on, as available at `step`; None stands for a skipped bad record."""
        raise NotImplementedError

    def _document(self, row: dict, fallback_id: str) -> Document:
        license = row.get(self.cfg.license_field)
        text = json.dumps(row) if self.cfg.text_field == "*" else str(row.get(self.cfg.text_field, ""))
        return Document(self.name, str(row.get(self.cfg.id_field, fallback_id)), text,
                        None if license is None else str(license))


class GeneratorSource(Source):
    """Infinite procedural documents; document i depends only on (seed, name, i)."""

    def __init__(self, cfg: SourceConfig, seed: int):
        super().__init__(cfg)
        self.make = generator(cfg.generator or "", cfg.name)
        self.seed = seed

    def read(self, cursor: int, step: int) -> Iterator[tuple[Document, int]]:
        i = cursor
        while True:
            text = self.make(random.Random(f"{self.seed}:{self.name}:{i}"))
            yield Document(self.name, f"{self.name}:{i}", text), i + 1
            i += 1


class FileSource(Source):
    def __init__(self, cfg: SourceConfig, skip_bad_lines: bool):
        super().__init__(cfg)
        self.files = sorted({f for pattern in cfg.paths for f in glob.glob(pattern)})
        if not self.files:
            raise FactoryError(f"source {cfg.name}: no files match {cfg.paths}")
        self.skip_bad_lines = skip_bad_lines

    def start(self) -> list[int]:
        return [0, 0, 0]


class JsonlSource(FileSource):
    """Cursor: [file index, byte offset, line number]."""

    def read(self, cursor: list[int], step: int) -> Iterator[tuple[Document | None, list[int]]]:
        file_index, offset, line_no = cursor
        for index in range(file_index, len(self.files)):
            path = self.files[index]
            with open(path, "rb") as f:
                f.seek(offset)
                for raw in iter(f.readline, b""):
                    line_no += 1
                    offset += len(raw)
                    after = [index, offset, line_no]
                    if raw.strip():
                        yield self._parse(raw, path, line_no), after
            offset, line_no = 0, 0

    def _parse(self, raw: bytes, path: str, line_no: int) -> Document | None:
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as exc:
            if self.skip_bad_lines:
                return None
            raise DataFileError(f"{path}:{line_no}: malformed line: {exc}") from None
        return self._document(row, f"{path}:{line_no}")


class ParquetSource(FileSource):
    """Cursor: [file index, row, 0]; read with pyarrow one row group at a time."""

    def read(self, cursor: list[int], step: int) -> Iterator[tuple[Document, list[int]]]:
        import pyarrow.parquet as pq

        file_index, row, _ = cursor
        for index in range(file_index, len(self.files)):
            path = self.files[index]
            pf = pq.ParquetFile(path)
            first = 0
            for group in range(pf.num_row_groups):
                size = pf.metadata.row_group(group).num_rows
                if first + size > row:
                    records = pf.read_row_group(group).to_pylist()
                    for at in range(max(row, first), first + size):
                        yield self._document(records[at - first], f"{path}:{at}"), [index, at + 1, 0]
                first += size
            row = 0


class LiveSource(Source):
    """Documents given to put(); each becomes readable from the step it was put at."""

    def __init__(self, cfg: SourceConfig, store):
        super().__init__(cfg)
        self.store = store

    def read(self, cursor: int, step: int) -> Iterator[tuple[Document, int]]:
        for index, row in self.store.live_docs(self.name, cursor, step):
            yield self._document(row, f"{self.name}:{index}"), index + 1


def make_source(cfg: SourceConfig, seed: int, store, skip_bad_lines: bool) -> Source:
    if cfg.type == "generator":
        return GeneratorSource(cfg, seed)
    if cfg.type == "jsonl":
        return JsonlSource(cfg, skip_bad_lines)
    if cfg.type == "parquet":
        return ParquetSource(cfg, skip_bad_lines)
    return LiveSource(cfg, store)
