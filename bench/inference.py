"""Claim: the inference pool (2 vLLM servers in Ray actors) generates faster than HF `generate`.

Same model, same prompts, same batch and lengths; every sequence runs to exactly
`new_tokens` on both sides (vLLM `ignore_eos`, HF `min_new_tokens`). HF gets
every core of the machine (torch threads = cores); the pool gets one server per
core. Measured for the tiny (~0.5M) and small (~10M) built models. On a machine with a GPU
both sides run there: HF on the GPU, the two servers sharing it (half of it each).

    python bench/inference.py [--quick] [KEY=VALUE ...]   (config overrides for the pool)

Each side runs the batch `--repeats` times (after a warm-up) and reports its median run; the
pool's run is split into its engines' time and the rest (see Pool).

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

from runtime.core.cluster import verbose
from runtime.core.config import BuildConfig, SamplingConfig, load_config
from runtime.data.corpus import corpus
from runtime.core.generation import GenerationRequest
from runtime.pools.inference_pool import InferencePool
from runtime.model.build import count_parameters, ensure_built
from device import DEVICE, GPUS, device_name
from quiet import process_trees, settle


def prompts(batch: int) -> list[str]:
    return [doc.split("\n")[0][:24] for doc in corpus(seed=7, n_docs=batch)]


class HF:
    """HF `generate` on every core, the model loaded once."""

    def __init__(self, model_path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(os.cpu_count() or 1)
        self.tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval().to(DEVICE)

    def run(self, texts: list[str], new_tokens: int) -> dict[str, float]:
        batch = self.tok(texts, return_tensors="pt", padding=True).to(DEVICE)
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                      pad_token_id=self.tok.pad_token_id)
        with torch.no_grad():
            start = time.perf_counter()
            out = self.model.generate(**batch, **kwargs)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
        return {"tokens_per_s": len(texts) * new_tokens / elapsed, "total_s": elapsed}


class Pool:
    """The inference pool (one server per core); each run split into the engines' own time
    (`engine_s`: the busiest server inside vLLM's step) and the rest (`outside_s`: Ray calls,
    routing, serialisation, waiting)."""

    def __init__(self, model_path, overrides: list[str]):
        cfg = load_config("default", [f"model.path={model_path}", "experiment.name=bench-inference", *overrides])
        self.pool = InferencePool(cfg, model_path).start()
        self.servers = cfg.placement.inference.replicas

    def run(self, texts: list[str], new_tokens: int) -> dict[str, float]:
        sampling = SamplingConfig(max_tokens=new_tokens, ignore_eos=True, temperature=1.0)
        before = self._engine_s()
        start = time.perf_counter()
        results = self.pool.generate([GenerationRequest(prompt=t, sampling=sampling) for t in texts])
        elapsed = time.perf_counter() - start
        engine = max(after - before.get(name, 0.0) for name, after in self._engine_s().items())
        assert all(len(r.completions[0].token_ids) == new_tokens for r in results)
        return {"tokens_per_s": len(texts) * new_tokens / elapsed, "total_s": elapsed, "engine_s": engine,
                "outside_s": elapsed - engine}

    def _engine_s(self) -> dict[str, float]:
        return {name: h["engine_s"] for name, h in self.pool.health().items()}

    def shutdown(self) -> list[str]:
        """Stop the servers and wait for their processes to exit (vLLM's engine cores with them);
        returns any that had to be killed."""
        processes = process_trees([h["pid"] for h in self.pool.health().values()])
        self.pool.shutdown()
        return settle(processes)


def median_run(side, texts: list[str], new_tokens: int, repeats: int) -> dict[str, float]:
    side.run(texts[:4], 4)
    runs = sorted((side.run(texts, new_tokens) for _ in range(repeats)), key=lambda r: r["tokens_per_s"])
    return {name: round(value, 1 if name == "tokens_per_s" else 4) for name, value in runs[len(runs) // 2].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, finishes in under a minute")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    parser.add_argument("overrides", nargs="*", help="config overrides for the pool, e.g. inference.compile=true")
    args = parser.parse_args()
    batch, new_tokens = (32, 32) if args.quick else (64, 64)
    ray.init(address="local", num_cpus=8, num_gpus=GPUS, include_dashboard=False,
             log_to_driver=verbose())
    cache = tempfile.mkdtemp(prefix="bench-models-")
    rows = []
    for preset in ("tiny", "small"):
        path = ensure_built(BuildConfig(preset=preset), 0, Path(cache))
        texts = prompts(batch)
        # on a GPU the two servers share it, each with what its half gives by default (0.45 of the
        # memory, the KV cache sized by inference.kv_cache_gb)
        on_gpu = ["placement.inference.num_gpus=0.5"]
        pool = Pool(path, [*(on_gpu if DEVICE == "cuda" else []), *args.overrides])
        try:
            pool_run = median_run(pool, texts, new_tokens, args.repeats)
        finally:
            killed = pool.shutdown()
        hf = median_run(HF(path), texts, new_tokens, args.repeats)
        ratio = pool_run["tokens_per_s"] / hf["tokens_per_s"]
        rows.append({"model": preset, "params": count_parameters(path), "batch": batch, "new_tokens": new_tokens,
                     "servers": pool.servers, "pool": pool_run, "hf_generate": hf, "ratio": round(ratio, 2),
                     "killed_before_baseline": killed})
        print(f"{preset}: pool of {pool.servers} {pool_run['tokens_per_s']:,.0f} tok/s (engine "
              f"{pool_run['engine_s']:.3f}s of {pool_run['total_s']:.3f}s), HF generate {hf['tokens_per_s']:,.0f} "
              f"tok/s, ratio {ratio:.2f}", flush=True)
    ray.shutdown()
    print(json.dumps({"bench": "inference", "quick": args.quick, "device": device_name(),
                      "overrides": args.overrides, "results": rows}))


if __name__ == "__main__":
    main()
