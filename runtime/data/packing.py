"""Tokenise and pack documents into `seq_len` samples without splitting a piece across samples.

A document's tokens (plus end-of-sequence) are cut into pieces of at most
`seq_len`; pieces are packed whole, so every sample holds complete pieces and
`segment_ids` marks where each begins (0 is padding). A piece that does not fit
waits as `pending` for the next sample of its source; that is the packer's
whole state besides its source cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.data.sources import Document


@dataclass
class Piece:
    doc_id: str
    offset: int
    """Token offset of this piece within its document."""
    tokens: list[int]

    def to_state(self) -> list:
        return [self.doc_id, self.offset, self.tokens]


@dataclass
class Sample:
    source: str
    tokens: list[int]
    segment_ids: list[int]
    pieces: list[dict[str, Any]] = field(default_factory=list)
    """Provenance: doc_id, offset, length, position in the sample."""
    text: str = ""
    """The document itself, for unpacked streams (`Sample.whole`)."""

    @classmethod
    def whole(cls, doc: Document) -> Sample:
        """One untokenised document as a sample; its length counts characters."""
        return cls(doc.source, [], [], [{"doc_id": doc.id, "offset": 0, "length": len(doc.text), "start": 0}], doc.text)


def cut(doc: Document, tokens: list[int], seq_len: int) -> list[Piece]:
    return [Piece(doc.id, i, tokens[i : i + seq_len]) for i in range(0, len(tokens), seq_len)]


class Packer:
    """Packs one source's documents; `fill` pulls (document, cursor) pairs as it needs them."""

    def __init__(self, source: str, seq_len: int, pad_id: int, tokenize: Callable[[str], list[int]]):
        self.source = source
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.tokenize = tokenize
        self.queue: list[Piece] = []

    def state(self) -> list:
        return [p.to_state() for p in self.queue]

    def load(self, state: list) -> None:
        self.queue = [Piece(*p) for p in state]

    def next_sample(self, documents: Iterator[Document]) -> Sample | None:
        """One packed sample, or None if the source has nothing (now)."""
        sample = Sample(self.source, [], [])
        while True:
            if not self.queue and not self._refill(documents):
                break
            piece = self.queue[0]
            if len(sample.tokens) + len(piece.tokens) > self.seq_len:
                break
            self.queue.pop(0)
            sample.pieces.append({"doc_id": piece.doc_id, "offset": piece.offset, "length": len(piece.tokens),
                                  "start": len(sample.tokens)})
            sample.segment_ids += [len(sample.pieces)] * len(piece.tokens)
            sample.tokens += piece.tokens
        if not sample.tokens:
            return None
        padding = self.seq_len - len(sample.tokens)
        sample.tokens += [self.pad_id] * padding
        sample.segment_ids += [0] * padding
        return sample

    def _refill(self, documents: Iterator[Document]) -> bool:
        doc = next(documents, None)
        if doc is None:
            return False
        self.queue = cut(doc, self.tokenize(doc.text), self.seq_len)
        return True
