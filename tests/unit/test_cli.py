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
    (["run", "default", "placement.trainer.replicas=0"],
     "override placement.trainer.replicas=0: placement.trainer.replicas: Input should be greater than or equal to 1"),
    (["run", "default", "placement.inference.replicas=0"], "placement.inference.replicas: Input should be greater"),
    (["run", "default", "placement.sandbox.replicas=0"], "placement.sandbox.replicas: Input should be greater"),
    (["run", "default", "rl.max_tokens=1000", "inference.max_model_len=64"],
     "rl.max_tokens (1000) leaves no room for a prompt in inference.max_model_len (64)"),
    (["run", "default", "data.batch_size=3"],
     "data.batch_size (3) must divide evenly over placement.trainer.replicas (2)"),
    (["run", "default", "rl.clip_low=2"], "override rl.clip_low=2: rl.clip_low: Input should be less than 1 (got 2)"),
    (["run", "default", "sandbox.concurrency=1000"], "sandbox.concurrency: Input should be less than or equal to 64"),
    (["run", "default", "data.sources.0.wieght=2"], "unknown key data.sources.0.wieght (did you mean data.sources.0.weight?)"),
    (["run", "default", "data.sources=[{name: g, type: generator, generator: arithmetik}]"],
     "data.sources.0 (g): unknown generator arithmetik (known: function_examples"),
    (["run", "default", "data.seq_len=5000"], "data.seq_len (5000) is beyond the model's 1024 positions"),
    (["generate", "default", "hi", "-n", "3", "--temperature", "0"], "n=3 completions at temperature 0 (greedy)"),
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


def test_a_rule_across_fields_is_one_short_line_without_the_tree():
    out = factory("config", "default", "data.batch_size=3")
    assert out.returncode == 2
    assert out.stderr.strip() == ("factory: error: recipes/default.yaml: data.batch_size (3) must divide evenly over "
                                  "placement.trainer.replicas (2)")


@pytest.mark.parametrize("content, field, message", [
    ('{"task_id": "a", "prompt": "p", "answer": "1"}\n{"task_id": "b", "prompt": "q", "answer": "2"}\n{"task_id": oops\n',
     "rl.tasks.sources", "rl.tasks.sources.0 (mine): {path}:3: malformed line"),
    ('{"task_id": "a", "prompt": "p"}\n', "rl.tasks.sources", "rl.tasks.sources.0 (mine): task source mine"),
    ("", "data.sources", "data.sources.0 (mine): no documents in {path}"),
    ("\n\n", "data.sources", "data.sources.0 (mine): no documents in {path}"),
])
def test_what_a_run_reads_is_checked_before_anything_starts(content, field, message, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    runs = tmp_path / "runs"
    runs.mkdir()
    out = factory("run", "default", f"{field}=[{{name: mine, type: jsonl, paths: [{data}], text_field: '*'}}]",
                  f"experiment.runs_root={runs}")
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"factory: error: {message.format(path=data)}"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "dashboard" not in out.stdout, "preflight runs before the cluster starts"
    assert not list(runs.iterdir()), "a rejected run leaves nothing behind"


def test_an_empty_task_file_for_sandbox_check_is_one_line_before_ray(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = factory("sandbox", "check", str(empty))
    assert out.returncode == 2
    assert out.stderr.strip() == f"factory: error: {empty}: no tasks (an empty file, or every line blank)"


def test_missing_solutions_file_is_one_line_before_ray():
    tasks = Path(__file__).resolve().parents[1] / "data" / "mbpp_sample.jsonl"
    out = factory("sandbox", "check", str(tasks), "--solutions", "nope.jsonl")
    assert out.returncode == 2 and out.stderr.strip() == "factory: error: nope.jsonl: no such file"


def test_ray_address_may_be_the_dashboard_url(monkeypatch):
    from runtime.core.cluster import dashboard_to_gcs
    from runtime.core.errors import ConfigError

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert dashboard_to_gcs("http://127.0.0.1:8265") == "auto" and "RAY_ADDRESS" not in __import__("os").environ
    assert dashboard_to_gcs("10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=http://10.0.0.5:8265 is a dashboard on another host"):
        dashboard_to_gcs("http://10.0.0.5:8265")


def test_resources_the_cluster_lacks_are_named_before_anything_starts():
    from runtime.core.config import load_config
    from runtime.jobs.preflight import PreflightError, check_resources

    with pytest.raises(PreflightError, match=r"^placement.sandbox: needs 128 CPUs and the cluster has 8 "):
        check_resources(load_config("default", ["placement.sandbox.num_cpus=64"]), {"CPU": 8.0})
    with pytest.raises(PreflightError, match=r"^placement: the run's actors need 9 CPUs together and the cluster has 8 "
                                             r"\(placement.inference 2, placement.sandbox 1, placement.trainer 6\)"):
        check_resources(load_config("default", ["placement.trainer.num_cpus=3"]), {"CPU": 8.0})
    check_resources(load_config("default"), {"CPU": 8.0})


def test_version():
    out = factory("--version")
    assert out.returncode == 0 and out.stdout.startswith("factory 0.")



def test_the_python_client_checks_a_config_again_before_submitting():
    from runtime.cli.client import FactoryClient
    from runtime.core.errors import ConfigError

    cfg = FactoryClient.load("default", "rl.steps=5 rl.mode=async")  # a string, split as a shell would
    assert (cfg.rl.steps, cfg.rl.mode) == (5, "async")
    cfg.data.batch_size = 3  # set directly: no check ran
    with pytest.raises(ConfigError, match=r"the config given to FactoryClient: data.batch_size \(3\) must divide"):
        FactoryClient("http://127.0.0.1:9").submit(cfg)  # refused before any connection is tried


def test_runtime_env_is_inline_yaml_or_a_file(tmp_path):
    from runtime.cli.main import _runtime_env
    from runtime.core.errors import FactoryError

    assert _runtime_env("{pip: [six], env_vars: {A: b}}") == {"pip": ["six"], "env_vars": {"A": "b"}}
    (tmp_path / "env.yaml").write_text("working_dir: .\n")
    assert _runtime_env(str(tmp_path / "env.yaml")) == {"working_dir": "."}
    with pytest.raises(FactoryError, match="--runtime-env: expected a mapping"):
        _runtime_env("nope.yaml")
