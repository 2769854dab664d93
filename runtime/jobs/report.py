"""The end of a run: a table of stages on stdout, and RUN_DIR/plot.png of loss, reward and pass@1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.core.errors import FactoryError
from runtime.core.jsonl import objects

COLUMNS = [("stage", "{}"), ("steps", "{}"), ("pass@1", "{:.3f}"), ("tokens/s", "{:.0f}"), ("wall s", "{:.1f}")]


def eval_curves(run_dir: Path, handed: list[int] = ()) -> dict[str, Any]:
    """From RUN_DIR/evals.jsonl: each suite's [version, score] over versions, the regressions found,
    and the versions handed to the Evaluator that it never evaluated (`missed`)."""
    path = Path(run_dir) / "evals.jsonl"
    rows = [row for _, row in objects(path, FactoryError)] if path.is_file() else []
    curves: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: r["version"]):
        curves.setdefault(row["suite"], []).append([row["version"], row["score"]])
    regressions = [{"suite": r["suite"], "version": r["version"], "score": r["score"], **r["regression"]}
                   for r in rows if "regression" in r]
    asked = {r.get("asked") for r in rows}
    return {"curves": curves, "regressions": regressions, "missed": [v for v in handed if v not in asked]}


def synthetic_totals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """From RUN_DIR/synthetic.jsonl, per synthetic job: batches, samples, kept, acceptance rate."""
    path = Path(run_dir) / "synthetic.jsonl"
    totals: dict[str, dict[str, Any]] = {}
    for _, row in objects(path, FactoryError) if path.is_file() else []:
        job = totals.setdefault(row["job"], {"batches": 0, "samples": 0, "kept": 0})
        job["batches"] += 1
        job["samples"] += row["samples"]
        job["kept"] += row["kept"]
    for job in totals.values():
        job["acceptance"] = job["kept"] / max(1, job["samples"])
    return totals


def curve_lines(evals: dict[str, Any]) -> list[str]:
    """One line per eval suite: its score at each version evaluated, and its regressions."""
    out = []
    for suite, points in evals.get("curves", {}).items():
        out.append(f"eval {suite}: " + ", ".join(f"v{v} {score:.3f}" for v, score in points))
    out += [f"regression: {r['suite']} on v{r['version']} {r['score']:.3f}, best {r['best']:.3f} on v{r['best_version']}"
            for r in evals.get("regressions", [])]
    if evals.get("missed"):
        out.append(f"not evaluated (evaluator lost): {', '.join(f'v{v}' for v in evals['missed'])}")
    return out


def table(stages: list[dict[str, Any]], evals: dict[str, Any] | None = None,
          synthetic: dict[str, dict[str, Any]] | None = None) -> str:
    """One row per stage: its steps, pass@1 after it, training tokens/s and wall time; then the eval
    curves and the synthetic jobs."""
    rows = [[fmt.format(value) if value is not None else "-" for (_, fmt), value in
             zip(COLUMNS, (s["stage"], s["steps"], s["pass_at_1"], s.get("tokens_per_s"), s["wall_s"]))]
            for s in stages]
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line([name for name, _ in COLUMNS]), line(["-" * w for w in widths]), *map(line, rows),
                      *curve_lines(evals or {}),
                      *(f"synthetic {name}: {t['kept']} of {t['samples']} samples kept ({t['acceptance']:.1%}) in "
                        f"{t['batches']} batches" for name, t in (synthetic or {}).items())])


def plot(records: list[dict[str, Any]], stages: list[dict[str, Any]], path: Path) -> Path:
    """Three panels: training loss per step (pre-training, SFT, RL), RL reward per step, pass@1 per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, reward, passed) = plt.subplots(1, 3, figsize=(14, 4))
    offset = 0
    for stage in ("pretrain", "sft", "rl"):
        rows = [r for r in records if r.get("stage") == stage and "loss" in r]
        if rows:
            loss.plot([offset + i + 1 for i in range(len(rows))], [r["loss"] for r in rows], label=stage)
            offset += len(rows)
    loss.set(title="training loss", xlabel="step")
    loss.legend()
    rl = [r for r in records if r.get("stage") == "rl"]
    reward.plot([r["step"] for r in rl], [r["reward"] for r in rl], marker=".")
    reward.set(title="RL reward (mean over rollouts)", xlabel="RL step", ylim=(0, 1))
    passed.bar([s["stage"] for s in stages], [s["pass_at_1"] for s in stages])
    passed.set(title="pass@1 on held-out tasks, after each stage", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
