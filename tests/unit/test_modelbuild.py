"""The locally built model: deterministic, cached, loadable by transformers, sized as promised."""

import hashlib

import pytest

from runtime.core.config import BuildConfig, ModelConfig
from runtime.core.errors import ModelPathError
from runtime.model.build import count_parameters, ensure_built, resolve_model


def digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = ensure_built(BuildConfig(), 0, tmp_path / "a")
    b = ensure_built(BuildConfig(), 0, tmp_path / "b")
    c = ensure_built(BuildConfig(), 1, tmp_path / "c")
    assert digest(a) == digest(b)
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]


def test_cached_by_content_hash(tmp_path):
    first = ensure_built(BuildConfig(), 0, tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_built(BuildConfig(), 0, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp, "a cache hit must not rebuild"
    assert ensure_built(BuildConfig(num_layers=3), 0, tmp_path) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building-")]


@pytest.mark.parametrize("preset, low, high", [("tiny", 0.4e6, 0.6e6), ("small", 8e6, 12e6)])
def test_sizes(tmp_path, preset, low, high):
    path = ensure_built(BuildConfig(preset=preset), 0, tmp_path)
    assert low <= count_parameters(path) <= high


def test_transformers_loads_it_and_the_tokenizer_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_built(BuildConfig(), 0, tmp_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    text = "def f(x):\n    return 3 * x + 1\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text), "BPE merges must compress the corpus's own text"
    assert model.config.vocab_size == len(tok) == 512


def test_model_path_errors_name_the_path(tmp_path):
    with pytest.raises(ModelPathError, match="no such directory: /no/such"):
        resolve_model(ModelConfig(path="/no/such"), 0)
    with pytest.raises(ModelPathError, match="has no config.json"):
        resolve_model(ModelConfig(path=str(tmp_path)), 0)
