"""Weight versions on disk: every published version is an HF model directory under the run.

    RUN_DIR/versions/v0, v1, ...   what the inference pool served, in order
    RUN_DIR/checkpoints/<name>     checkpoints trainers save

Each is a complete HF causal-LM directory (config, tokenizer, safetensors), so
transformers, vLLM, `factory generate` and the playground all load it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")
VERSION = re.compile(r"^v(\d+)$")


def version_dir(run_dir: Path | str, version: int) -> Path:
    return Path(run_dir) / "versions" / f"v{version}"


def save_version(run_dir: Path | str, version: int, weights: Mapping[str, Any], base: Path | str) -> Path:
    """Write `weights` as version `version`, with config and tokenizer from the `base` model directory."""
    from safetensors.torch import save_file

    out = version_dir(run_dir, version)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (Path(base) / name).is_file():
            shutil.copy2(Path(base) / name, out / name)
    tensors, seen = {}, set()
    for key, tensor in weights.items():
        if tensor.data_ptr() in seen:
            continue  # tied weights (lm_head = embeddings) are stored once, as transformers does
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().contiguous().cpu()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def link_base(run_dir: Path | str, base: Path | str) -> Path:
    """Version 0 is the model the run started from: its files hard-linked into the run directory
    (copied across filesystems), so a copied or moved run directory is whole."""
    out = version_dir(run_dir, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        shutil.copytree(Path(base).resolve(), out, copy_function=_link_or_copy)
    return out


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def list_models(run_dir: Path | str) -> dict[str, Path]:
    """Every servable model of a run: versions by number, then checkpoints by name."""
    run = Path(run_dir)
    versions = sorted(((int(m.group(1)), p) for p in (run / "versions").glob("v*")
                       if (m := VERSION.match(p.name)) and (p / "config.json").is_file()))
    models = {f"v{n}": p for n, p in versions}
    for p in sorted((run / "checkpoints").glob("*")):
        if (p / "config.json").is_file():
            models[p.name] = p
    return models
