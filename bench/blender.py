"""Claim: the blender streams tokenized, packed samples to trainer actors at a rate comparable to
Ray Data reading the same files, while also mixing, deduplicating and recording provenance.

Ours: the DataBlender actor over two JSONL sources (weights 0.5/0.5, filters
license + dedup + length, packing that keeps pieces whole, a manifest per
step in SQLite), pulled by 2 consumer actors as shards of each step.
Baseline: Ray Data `read_json` over the same files, the same tokenizer in
`map_batches` (batched), concatenate-and-chunk packing, `streaming_split(2)`
into 2 consumer actors, each reading with `iter_torch_batches`; no mixing, no
filters, no provenance.

    python bench/blender.py [--quick]

The last stdout line is one JSON document with both rates and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from actors.data_blender import DataBlender
from runtime.core.cluster import verbose
from runtime.core.config import BuildConfig, load_config
from runtime.data.corpus import corpus
from runtime.model.build import ensure_built

SEQ_LEN, BATCH = 128, 32


@ray.remote(num_cpus=0.5)
class Consumer:
    def pull_blender(self, blender, shard: int, num_shards: int, steps: int) -> int:
        return sum(len(ray.get(blender.batch.remote(s, shard, num_shards), timeout=120)["input_ids"]) for s in range(steps))

    def pull_split(self, iterator) -> int:
        return sum(len(b["input_ids"]) for b in iterator.iter_torch_batches(batch_size=BATCH // 2))


def write_files(root: Path, docs_per_file: int) -> list[str]:
    paths = []
    for f in range(2):
        path = root / f"part-{f}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{f}-{i}", "text": text, "license": "mit"}) + "\n"
                                for i, text in enumerate(corpus(seed=f, n_docs=docs_per_file))))
        paths.append(str(path))
    return paths


def ours(model: Path, files: list[str], run_dir: Path, steps: int) -> float:
    sources = json.dumps([{"name": f"part{i}", "type": "jsonl", "paths": [p], "weight": 0.5} for i, p in enumerate(files)])
    cfg = load_config("default", [f"model.path={model}", f"experiment.run_dir={run_dir}", f"data.sources={sources}",
                                  f"data.seq_len={SEQ_LEN}", f"data.batch_size={BATCH}", "data.prefetch_steps=8"])
    blender = ray.remote(DataBlender).options(max_concurrency=8).remote(cfg.data, cfg.experiment.seed, str(run_dir), str(model),
                                                                "bench/blender/0")
    ray.get(blender.setup.remote(), timeout=120)
    consumers = [Consumer.remote() for _ in range(2)]
    start = time.perf_counter()
    samples = sum(ray.get([c.pull_blender.remote(blender, k, 2, steps) for k, c in enumerate(consumers)], timeout=600))
    elapsed = time.perf_counter() - start
    ray.get(blender.shutdown.remote(), timeout=60)
    return samples / elapsed


def ray_data(model: Path, files: list[str]) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    eos = tokenizer.eos_token_id

    def tokenize_and_pack(batch: dict) -> dict:
        ids = tokenizer(list(batch["text"]), add_special_tokens=False)["input_ids"]
        flat = np.fromiter((t for doc in ids for t in doc + [eos]), dtype=np.int64)
        rows = len(flat) // SEQ_LEN
        return {"input_ids": flat[: rows * SEQ_LEN].reshape(rows, SEQ_LEN)}

    ds = ray.data.read_json(files).map_batches(tokenize_and_pack, batch_size=1024, batch_format="numpy")
    consumers = [Consumer.remote() for _ in range(2)]
    start = time.perf_counter()
    splits = ds.streaming_split(2, equal=False)
    samples = sum(ray.get([c.pull_split.remote(it) for c, it in zip(consumers, splits)], timeout=600))
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer documents, under a minute")
    args = parser.parse_args()
    docs = 4000 if args.quick else 40000
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=verbose())
    ray.data.DataContext.get_current().enable_progress_bars = False
    root = Path(tempfile.mkdtemp(prefix="bench-blender-"))
    model = ensure_built(BuildConfig(), 0, root / "models")
    files = write_files(root, docs)
    baseline = ray_data(model, files)
    steps = max(4, (2 * docs * 12 // SEQ_LEN) // BATCH // 2)
    blended = ours(model, files, root / "run", steps)
    ray.shutdown()
    print(f"blender: {blended:,.0f} samples/s; Ray Data: {baseline:,.0f} samples/s")
    print(json.dumps({"bench": "blender", "quick": args.quick, "seq_len": SEQ_LEN, "consumers": 2,
                      "blender_samples_per_s": round(blended, 1), "ray_data_samples_per_s": round(baseline, 1),
                      "ratio": round(blended / baseline, 3)}))


if __name__ == "__main__":
    main()
