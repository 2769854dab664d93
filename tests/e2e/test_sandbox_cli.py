"""`factory sandbox check` through the real pool; its last line is JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DATA = Path(__file__).resolve().parents[1] / "data"
FACTORY = str(Path(sys.executable).parent / "factory")


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FACTORY, "sandbox", "check", *args, "cluster.dashboard_port=0"],
                          capture_output=True, text=True, timeout=300)


def test_canonical_solutions_pass_and_given_ones_are_judged(tmp_path):
    out = check(str(DATA / "mbpp_sample.jsonl"))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["tasks"], summary["passed"], summary["status"]) == (2, 2, {"ok": 2})

    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text(json.dumps({"task_id": "11", "completion": "def square(x):\n    return x + x"}) + "\n")
    out = check(str(DATA / "mbpp_sample.jsonl"), "--solutions", str(solutions))
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["tasks"], summary["passed"], summary["failed_ids"]) == (1, 0, ["11"])
    assert summary["failed"] == [{"task_id": "11", "reason": summary["failed"][0]["reason"]}]
    assert "failed 11: " in out.stdout and "2 of 3 test cases passed" in out.stdout, out.stdout
    assert summary["mean_fraction"] == pytest.approx(2 / 3, abs=1e-3), "square(2) and square(0) happen to pass"


def test_a_malformed_task_file_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text((DATA / "mbpp_sample.jsonl").read_text() + "{oops\n")
    out = check(str(bad))
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"factory: error: {bad}:3: not valid JSON")
