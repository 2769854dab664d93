"""Claim: the inference pool (2 vLLM servers in Ray actors) generates faster than HF `generate`.

Same model, same prompts, same batch and lengths; every sequence runs to exactly
`new_tokens` on both sides (vLLM `ignore_eos`, HF `min_new_tokens`). HF gets
every core of the machine (torch threads = cores); the pool gets one server per
core. Measured for the tiny (~0.5M) and small (~10M) built models.

    python bench/inference.py [--quick]

The last stdout line is one JSON document with both figures and the ratio per model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from runtime.core.config import BuildConfig, SamplingConfig, load_config
from runtime.data.corpus import corpus
from runtime.core.generation import GenerationRequest
from runtime.pools.inference_pool import InferencePool
from runtime.model.build import count_parameters, ensure_built


def prompts(batch: int) -> list[str]:
    return [doc.split("\n")[0][:24] for doc in corpus(seed=7, n_docs=batch)]


def hf_tokens_per_s(model_path, texts: list[str], new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    batch = tok(texts, return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.generate(**tok(texts[:2], return_tensors="pt", padding=True), **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return len(texts) * new_tokens / elapsed


def pool_tokens_per_s(model_path, texts: list[str], new_tokens: int) -> float:
    cfg = load_config("default", [f"model.path={model_path}", "experiment.name=bench-inference"])
    pool = InferencePool(cfg, model_path).start()
    try:
        sampling = SamplingConfig(max_tokens=new_tokens, ignore_eos=True, temperature=1.0)
        pool.generate([GenerationRequest(prompt=t, sampling=sampling.model_copy(update={"max_tokens": 4})) for t in texts[:4]])
        requests = [GenerationRequest(prompt=t, sampling=sampling) for t in texts]
        start = time.perf_counter()
        results = pool.generate(requests)
        elapsed = time.perf_counter() - start
    finally:
        pool.shutdown()
    assert all(len(r.completions[0].token_ids) == new_tokens for r in results)
    return len(texts) * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, finishes in under a minute")
    args = parser.parse_args()
    batch, new_tokens = (32, 32) if args.quick else (64, 64)
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    cache = tempfile.mkdtemp(prefix="bench-models-")
    rows = []
    for preset in ("tiny", "small"):
        path = ensure_built(BuildConfig(preset=preset), 0, Path(cache))
        texts = prompts(batch)
        pool = pool_tokens_per_s(path, texts, new_tokens)
        hf = hf_tokens_per_s(path, texts, new_tokens)
        rows.append({"model": preset, "params": count_parameters(path), "batch": batch, "new_tokens": new_tokens,
                     "pool_tokens_per_s": round(pool, 1), "hf_generate_tokens_per_s": round(hf, 1),
                     "ratio": round(pool / hf, 2)})
        print(f"{preset}: pool {pool:,.0f} tok/s, HF generate {hf:,.0f} tok/s, ratio {pool / hf:.2f}", flush=True)
    ray.shutdown()
    print(json.dumps({"bench": "inference", "quick": args.quick, "servers": 2, "results": rows}))


if __name__ == "__main__":
    main()
