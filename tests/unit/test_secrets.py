"""Secrets come from the environment or an owner-only file, and never enter the config tree.

So they are absent from RUN_DIR/config.yaml (cfg.to_yaml()), `factory config`, and the
environment `factory submit` gives the job (the config as JSON).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli.client import CONFIG_ENV, FactoryClient
from runtime.core.config import SECRETS, load_config
from runtime.core.credentials import read_secret
from runtime.core.errors import ConfigError

ENV_TOKEN, FILE_TOKEN = "env-token-5e3c7a", "file-token-9b1d44"


def secret_file(tmp_path: Path, value: str, mode: int = 0o600, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("path", sorted(SECRETS))
def test_a_literal_secret_override_is_refused_without_echoing_it(path):
    env, file_field = SECRETS[path]
    with pytest.raises(ConfigError, match=rf"{path}: a secret is never a config value .*set {env} or {file_field}") \
            as refused:
        load_config("default", [f"{path}=hunter2"])
    assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_literal_secret_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "leaky.yaml"
    recipe.write_text("weights:\n  grpc:\n    enabled: true\n    token: hunter2\n")
    with pytest.raises(ConfigError, match="weights.grpc.token: a secret is never a config value") as refused:
        load_config(recipe)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_a_secret_file_group_or_others_can_access_is_refused(tmp_path, mode):
    path = secret_file(tmp_path, "hunter2", mode)
    with pytest.raises(ConfigError, match=rf"^sandbox.grpc.token_file: {path} .* chmod 600 {path}$") as refused:
        read_secret("FACTORY_SANDBOX_TOKEN", str(path), "sandbox.grpc.token_file")
    assert "hunter2" not in str(refused.value)


def test_an_owner_only_file_is_read_and_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_SANDBOX_TOKEN", ENV_TOKEN)
    for mode in (0o600, 0o400):
        path = secret_file(tmp_path, FILE_TOKEN, mode, name=f"token-{mode:o}")
        assert read_secret("FACTORY_SANDBOX_TOKEN", str(path), "sandbox.grpc.token_file") == FILE_TOKEN
    assert read_secret("FACTORY_SANDBOX_TOKEN", None, "sandbox.grpc.token_file") == ENV_TOKEN
    monkeypatch.delenv("FACTORY_SANDBOX_TOKEN")
    assert read_secret("FACTORY_SANDBOX_TOKEN", None, "sandbox.grpc.token_file") is None


@pytest.mark.parametrize("problem, message", [("missing", "cannot read"), ("dir", "not a regular file"),
                                              ("empty", "must hold one secret")])
def test_an_unusable_secret_file_is_one_clear_error(tmp_path, problem, message):
    path = {"missing": tmp_path / "nope", "dir": tmp_path, "empty": secret_file(tmp_path, "")}[problem]
    with pytest.raises(ConfigError, match=rf"^playground.api_key_file: .*{message}") as refused:
        read_secret("FACTORY_PLAYGROUND_KEY", str(path), "playground.api_key_file")
    assert str(path) in str(refused.value)


@pytest.fixture
def secrets_set(tmp_path, monkeypatch):
    """Overrides that configure every secret (one by variable, two by file), and the environment holding them."""
    monkeypatch.setenv("FACTORY_SANDBOX_TOKEN", ENV_TOKEN)
    weights, key = secret_file(tmp_path, FILE_TOKEN, name="weights"), secret_file(tmp_path, FILE_TOKEN, name="key")
    return ["sandbox.grpc.host=0.0.0.0", "weights.grpc.enabled=true", "weights.grpc.host=0.0.0.0",
            f"weights.grpc.token_file={weights}", "playground.host=0.0.0.0", f"playground.api_key_file={key}"]


def test_secrets_stay_out_of_the_saved_config_and_the_submitted_job(secrets_set):
    cfg = load_config("default", secrets_set)
    for text in (cfg.to_yaml(), cfg.model_dump_json()):
        assert ENV_TOKEN not in text and FILE_TOKEN not in text
    submitted = {}

    class Jobs:
        def submit_job(self, **kwargs):
            submitted.update(kwargs)
            return "job-1"

    client = FactoryClient()
    client._jobs = Jobs
    assert client.submit(cfg) == "job-1"
    assert list(submitted["runtime_env"]["env_vars"]) == [CONFIG_ENV]
    assert ENV_TOKEN not in repr(submitted) and FILE_TOKEN not in repr(submitted)


def test_factory_config_prints_no_secret(secrets_set):
    exe = shutil.which("factory", path=str(Path(sys.executable).parent))
    out = subprocess.run([exe, "config", "default", *secrets_set], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "token_file:" in out.stdout and "api_key_file:" in out.stdout
    assert ENV_TOKEN not in out.stdout + out.stderr and FILE_TOKEN not in out.stdout + out.stderr
