"""The playground's OpenAI-compatible API on a real Serve app over real vLLM engines."""

import socket
import urllib.error
import urllib.request

import openai
import pytest
import torch
from ray import serve
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from runtime.core.config import load_config
from runtime.core.errors import ConfigError
from runtime.model.build import init_model
from runtime.model.versions import link_base, save_version
from serve.playground import start

pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    run = tmp_path_factory.mktemp("playground-run")
    link_base(run, tiny_model)
    save_version(run, 1, init_model(AutoConfig.from_pretrained(tiny_model), seed=99).state_dict(), tiny_model)
    return run


def config(run_dir, tiny_model, *overrides):
    return load_config("default", [f"model.path={tiny_model}", "experiment.name=test-playground",
                                   f"experiment.run_dir={run_dir}", f"playground.port={free_port()}",
                                   "playground.max_tokens=64", "playground.max_prompt_tokens=64", *overrides])


@pytest.fixture(scope="module")
def playground(ray_cluster, run_dir, tiny_model):
    serve.shutdown()
    cfg = config(run_dir, tiny_model, "playground.max_concurrency_per_key=1")
    url = start(cfg, run_dir, name="test-playground")
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(playground):
    return openai.OpenAI(base_url=f"{playground}v1", api_key="unused-on-loopback", max_retries=0)


def test_models_lists_live_and_every_version(client):
    assert [m.id for m in client.models.list().data] == ["live", "v0", "v1"]


def test_completion_is_served_by_the_chosen_version(client, run_dir):
    answer = client.completions.create(model="v1", prompt="def f(x):", max_tokens=12, temperature=0)
    assert answer.system_fingerprint == "v1"
    model = AutoModelForCausalLM.from_pretrained(run_dir / "versions" / "v1")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "versions" / "v1")
    prompt = tokenizer("def f(x):")["input_ids"]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              pad_token_id=model.config.pad_token_id)[0, len(prompt):]
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    v0 = client.completions.create(model="v0", prompt="def f(x):", max_tokens=12, temperature=0)
    assert v0.system_fingerprint == "v0" and v0.choices[0].text != answer.choices[0].text
    live = client.completions.create(model="live", prompt="def f(x):", max_tokens=12, temperature=0)
    assert live.choices[0].text == answer.choices[0].text, "after a run, live is the newest version"


def test_chat_streams_the_same_text_it_returns_whole(client):
    messages = [{"role": "user", "content": "12 + 7 ="}]
    whole = client.chat.completions.create(model="v0", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="v0", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 2 and streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_unknown_model_is_a_404_listing_the_known_ones(client):
    with pytest.raises(openai.NotFoundError, match=r"model 'v7' not found; known models: live, v0, v1"):
        client.completions.create(model="v7", prompt="hi", max_tokens=4)


def test_oversized_requests_get_a_clear_400(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens must be an integer of at most 64"):
        client.completions.create(model="v0", prompt="hi", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match=r"prompt has \d+ tokens; the limit is 64"):
        client.completions.create(model="v0", prompt="def f(x): return x " * 100, max_tokens=4)
    assert client.completions.create(model="v0", prompt="hi", max_tokens=4).choices, "the app still serves"


def test_concurrency_per_key_is_limited(client):
    stream = client.completions.create(model="v0", prompt="1 + 1 =", max_tokens=64, temperature=1.0, stream=True)
    first = next(iter(stream))
    with pytest.raises(openai.RateLimitError, match="more than 1 requests running"):
        client.completions.create(model="v0", prompt="2 + 2 =", max_tokens=4)
    list(stream)
    assert first.choices and client.completions.create(model="v0", prompt="hi", max_tokens=2).choices


def test_off_loopback_needs_the_key(ray_cluster, run_dir, tiny_model, playground, tmp_path, monkeypatch):
    serve.shutdown()
    monkeypatch.delenv("FACTORY_PLAYGROUND_KEY", raising=False)
    with pytest.raises(ConfigError, match="binding 127.0.0.2 needs an API key"):
        start(config(run_dir, tiny_model, "playground.host=127.0.0.2"), run_dir, name="test-playground")
    key_file = tmp_path / "playground.key"
    key_file.write_text("sesame\n")
    key_file.chmod(0o600)
    url = start(config(run_dir, tiny_model, "playground.host=127.0.0.2", f"playground.api_key_file={key_file}"),
                run_dir, name="test-playground")
    try:
        with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
            openai.OpenAI(base_url=f"{url}v1", api_key="wrong", max_retries=0).models.list()
        for path in ("", "docs", "openapi.json", "feedback/pairs.jsonl", "nowhere"):
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(f"{url}{path}", timeout=30)
            assert denied.value.code == 401, path
        keyed = openai.OpenAI(base_url=f"{url}v1", api_key="sesame", max_retries=0)
        assert keyed.completions.create(model="v0", prompt="hi", max_tokens=2).choices
    finally:
        serve.shutdown()
