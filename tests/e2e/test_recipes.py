"""The recipes beside `default` run end to end (shortened), from any working directory: SFT then
GRPO on an answer-task file, DPO from preference pairs, code RL on an MBPP-format file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
FACTORY = str(Path(sys.executable).parent / "factory")
SHORT = ["train.total_steps=10", "rl.eval_tasks=8", "rl.eval_samples=2", "eval.every=0",
         "placement.inference.replicas=1", "placement.trainer.replicas=1"]


@pytest.mark.parametrize("recipe, overrides, stages", [
    ("sft-grpo-answers", ["sft.steps=2", "rl.steps=2"], ["pretrain", "sft", "rl"]),
    ("dpo", ["dpo.steps=2"], ["pretrain", "dpo"]),
    ("code-rl-mbpp", ["rl.steps=2"], ["pretrain", "rl"]),
])
def test_a_recipe_runs(recipe, overrides, stages, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([FACTORY, "run", recipe, *SHORT, *overrides, f"model.path={tiny_model}",
                          f"experiment.run_dir={run_dir}", "cluster.dashboard_port=0"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == stages
    if "rl" in stages:
        rl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["stage"] == "rl"]
        assert len(rl) == 2 and all(r["groups_used"] for r in rl), rl
