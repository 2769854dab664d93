"""Bad input: one line naming the problem, a non-zero exit, no traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def factory(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("factory", path=str(Path(sys.executable).parent))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["run", "default", "inference.replicas=2"], "unknown key inference.replicas"),
    (["run", "placement.inference.replicas=two"], "placement.inference.replicas: Input should be a valid integer"),
    (["run", "no-such-recipe"], "recipe not found: no-such-recipe"),
    (["run", "default", "model.path=/no/such/model"], "model.path: no such directory: /no/such/model"),
    (["generate", "/no/such/model", "hi"], "model.path: no such directory: /no/such/model"),
    (["run", "default", "noequals"], "override 'noequals' is not of the form"),
    (["run", "default", "sandbox.grpc.token=hunter2"], "sandbox.grpc.token: a secret is never a config value"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    out = factory(*args, f"experiment.runs_root={tmp_path}") if args[0] == "run" else factory(*args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert not list(tmp_path.iterdir()), "a rejected run leaves nothing behind"


def test_help_lists_commands():
    out = factory("--help")
    assert out.returncode == 0
    for command in ("run", "submit", "status", "logs", "stop", "generate"):
        assert command in out.stdout


def test_config_prints_the_resolved_tree():
    out = factory("config", "default", "placement.inference.replicas=5")
    assert out.returncode == 0, out.stderr
    assert "replicas: 5" in out.stdout and "hidden_size: 128" in out.stdout
