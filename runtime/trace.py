"""`factory trace RUN_DIR --step S`: the documents behind a step, read-only from the blender's store.

When trainers have written per-sample losses (table sample_losses), the samples
with the highest loss come first with their documents, so a loss spike can be
traced to the data behind it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from runtime.errors import FactoryError


def trace(run_dir: str | Path, step: int, top: int = 10) -> dict[str, Any]:
    path = Path(run_dir) / "blender.sqlite"
    if not path.is_file():
        raise FactoryError(f"{run_dir}: no blender.sqlite; is it a run directory of a run with a data blender?")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT sample, source, doc_id, offset, length FROM documents WHERE step = ? "
                          "ORDER BY sample, rowid", (step,)).fetchall()
        if not rows:
            last = db.execute("SELECT MAX(step) FROM manifests").fetchone()[0]
            raise FactoryError(f"step {step} was not served in {run_dir} (last served step: {last})")
        losses = db.execute("SELECT sample, loss FROM sample_losses WHERE step = ? ORDER BY loss DESC LIMIT ?",
                            (step, top)).fetchall()
    finally:
        db.close()
    documents = [{"sample": s, "source": src, "doc_id": d, "offset": o, "length": n} for s, src, d, o, n in rows]
    by_sample: dict[int, list] = {}
    for doc in documents:
        by_sample.setdefault(doc["sample"], []).append(doc)
    highest = [{"sample": s, "loss": loss, "documents": by_sample.get(s, [])} for s, loss in losses]
    return {"step": step, "documents": documents, "highest_loss": highest}


def render(result: dict[str, Any]) -> str:
    lines = [f"step {result['step']}: {len(result['documents'])} document pieces"]
    lines += [f"  sample {d['sample']:>4}  {d['source']:<14} {d['doc_id']}  offset {d['offset']}  tokens {d['length']}"
              for d in result["documents"]]
    if result["highest_loss"]:
        lines.append("highest loss:")
        for h in result["highest_loss"]:
            docs = ", ".join(f"{d['source']}:{d['doc_id']}" for d in h["documents"])
            lines.append(f"  sample {h['sample']:>4}  loss {h['loss']:.4f}  {docs}")
    return "\n".join(lines)
