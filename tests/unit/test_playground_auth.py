"""The playground's key check on the real FastAPI app, without a Ray cluster or Ray Serve running.

Routes reach their deployment instance through `serve.get_replica_context()`; the tests
stand in a replica context holding a Playground instance, as a Serve replica would.
"""

import base64
import types

import pytest
from fastapi.testclient import TestClient
from ray import serve

from runtime.core.config import load_config
from runtime.core.errors import ConfigError
from serve import playground

PATHS = ["/", "/docs", "/openapi.json", "/redoc", "/v1/models", "/feedback/pairs.jsonl", "/nowhere"]


def client(monkeypatch, tmp_path, key):
    deployed_class = playground.Playground.func_or_class.__bases__[0]  # the class under Serve's ingress wrapper
    assert deployed_class.__name__ == "Playground"
    instance = object.__new__(deployed_class)
    instance.key, instance.run_dir = key, tmp_path
    context = types.SimpleNamespace(servable_object=instance)
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    return TestClient(playground.app)


def basic(password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}


def test_off_loopback_every_path_needs_the_key(monkeypatch, tmp_path):
    http = client(monkeypatch, tmp_path, key="sesame")
    for path in PATHS:
        for headers in ({}, {"authorization": "Bearer wrong"}, basic("wrong"), {"authorization": "sesame"}):
            answer = http.get(path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert "sesame" not in answer.text
    assert http.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    assert "WWW-Authenticate" not in http.get("/v1/models").headers, "API clients get JSON, not a browser prompt"
    assert http.get("/").headers["WWW-Authenticate"].startswith("Basic"), "a browser asks for the key on the page"


def test_the_key_opens_the_api_and_the_page_and_there_are_no_docs(monkeypatch, tmp_path):
    http = client(monkeypatch, tmp_path, key="sesame")
    for headers in ({"authorization": "Bearer sesame"}, basic("sesame")):
        assert [m["id"] for m in http.get("/v1/models", headers=headers).json()["data"]] == ["live"]
        assert "<html" in http.get("/", headers=headers).text.lower()
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert http.get(path, headers=headers).status_code == 404


def test_on_loopback_without_a_key_the_api_is_open(monkeypatch, tmp_path):
    http = client(monkeypatch, tmp_path, key=None)
    assert http.get("/v1/models").status_code == 200
    assert http.get("/openapi.json").status_code == 404


def test_key_comes_from_an_owner_only_file_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FACTORY_PLAYGROUND_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text("sesame\n")
    key_file.chmod(0o644)
    cfg = load_config("default", ["playground.host=0.0.0.0", f"playground.api_key_file={key_file}"])
    with pytest.raises(ConfigError, match=r"playground.api_key_file: .* chmod 600"):
        playground.resolve_key(cfg)
    key_file.chmod(0o600)
    assert playground.resolve_key(cfg) == "sesame"
    off_loopback = load_config("default", ["playground.host=0.0.0.0"])
    with pytest.raises(ConfigError, match="binding 0.0.0.0 needs an API key"):
        playground.resolve_key(off_loopback)
    monkeypatch.setenv("FACTORY_PLAYGROUND_KEY", "from-env")
    assert playground.resolve_key(off_loopback) == "from-env"
