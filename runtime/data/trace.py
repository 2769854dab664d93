"""`factory trace RUN_DIR --step S`: the documents behind a step, read-only from the blender's store.

When trainers have written per-sample losses (table sample_losses), the samples
with the highest loss come first with their documents, so a loss spike can be
traced to the data behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.core.errors import FactoryError
from runtime.data.store import BlendStore


def trace(run_dir: str | Path, step: int, top: int = 10) -> dict[str, Any]:
    path = Path(run_dir) / "blender.sqlite"
    if not path.is_file():
        raise FactoryError(f"{run_dir}: no blender.sqlite; is it a run directory of a run with a data blender?")
    store = BlendStore(path, read_only=True)
    try:
        rows = store.step_documents(step)
        if not rows:
            raise FactoryError(f"step {step} was not served in {run_dir} (last served step: {store.last_step()})")
        losses = store.highest_losses(step, top)
    finally:
        store.close()
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
