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


def plot(records: list[dict[str, Any]], stages: list[dict[str, Any]], path: Path,
         curves: dict[str, list] | None = None) -> Path:
    """One panel per training stage's loss (each on its own scale), RL reward per step, and pass@1:
    after each stage (labelled points) and each Evaluator suite over weight versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(stage, [r for r in records if r.get("stage") == stage and "loss" in r])
              for stage in ("pretrain", "sft", "dpo", "rl")]
    losses = [(stage, rows) for stage, rows in losses if rows]
    fig, axes = plt.subplots(1, len(losses) + 2, figsize=(4.5 * (len(losses) + 2), 4))
    for ax, (stage, rows) in zip(axes, losses):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
        ax.set(title=f"{stage} loss", xlabel=f"{stage} step")
    reward, passed = axes[-2], axes[-1]
    rl = [r for r in records if r.get("stage") == "rl" and "reward" in r]
    reward.plot([r["step"] for r in rl], [r["reward"] for r in rl], marker=".")
    reward.set(title="RL reward (mean over rollouts)", xlabel="RL step", ylim=(0, 1))
    _pass_at_1(passed, stages, curves or {})
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _pass_at_1(ax, stages: list[dict[str, Any]], curves: dict[str, list]) -> None:
    done = [s for s in stages if s.get("pass_at_1") is not None]
    ax.plot(range(len(done)), [s["pass_at_1"] for s in done], marker="o", label="after each stage")
    for x, s in enumerate(done):
        ax.annotate(f"{s['stage']}\n{s['pass_at_1']:.3f}", (x, s["pass_at_1"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    ax.set(title="pass@1 on held-out tasks", xlabel="stage", ylim=(0, 1.05))
    ax.set_xticks(range(len(done)), [s["stage"] for s in done])
    if curves:
        versions = ax.twiny()
        for suite, points in curves.items():
            versions.plot([v for v, _ in points], [score for _, score in points], marker=".", linestyle="--",
                          label=f"{suite} (Evaluator)")
        versions.set_xlabel("weight version (Evaluator)")
        versions.legend(loc="upper right", fontsize=8)
