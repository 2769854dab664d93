"""Jobs that run a ray.cluster_utils.Cluster of their own, in a process apart from the test session's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cluster_job():
    return run_cluster_job


def run_cluster_job(script: str, model: Path, run_dir: Path, timeout_s: float = 900) -> dict:
    """Run tests/fault/`script` with (model, run_dir); its result: the last stdout line that is a JSON
    object (a removed node's raylet may still print after it)."""
    done = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), str(model), str(run_dir)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
