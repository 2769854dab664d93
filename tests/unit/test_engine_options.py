"""What an InferenceServer asks vLLM for on a GPU: servers sharing one GPU split its memory and
give their KV cache's size; engines compile there unless told.

The GPU is faked here (no GPU on CI): what is tested is the arithmetic around it, from the share
Ray assigned to the server and the config."""

import pytest
import torch

from actors.inference_server import compiled, gpu_options
from runtime.core.config import load_config
from runtime.core.errors import ConfigError


def test_on_cpu_vllm_gets_no_gpu_option():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_options(load_config("default", []).inference) == {}


@pytest.mark.parametrize("share, expected", [(1.0, 0.9), (0.5, 0.45), (0.25, 0.225), (2.0, 0.9)])
def test_a_server_takes_0_9_of_the_gpu_share_it_reserved(on_gpu, share, expected):
    on_gpu(share)
    assert gpu_options(load_config("default", []).inference)["gpu_memory_utilization"] == expected


def test_the_configured_fraction_wins_over_the_share(on_gpu):
    on_gpu(0.5)
    cfg = load_config("default", ["inference.gpu_memory_utilization=0.2"]).inference
    assert gpu_options(cfg)["gpu_memory_utilization"] == 0.2


def test_a_fraction_above_one_is_refused_with_its_path():
    with pytest.raises(ConfigError, match=r"inference\.gpu_memory_utilization=1\.5: .*less than or equal to 1"):
        load_config("default", ["inference.gpu_memory_utilization=1.5"])


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_servers_sharing_a_gpu_are_given_their_kv_cache_size(on_gpu, share):
    # vLLM's profiling counts a neighbour's allocations as its own: a shared GPU gets the size given
    on_gpu(share)
    options = gpu_options(load_config("default", ["inference.kv_cache_gb=2.5"]).inference)
    assert options["kv_cache_memory_bytes"] == int(2.5 * 2**30)


def test_a_server_with_a_whole_gpu_sizes_its_kv_cache_by_profiling(on_gpu):
    on_gpu(1.0)
    assert "kv_cache_memory_bytes" not in gpu_options(load_config("default", ["inference.kv_cache_gb=2.5"]).inference)


@pytest.mark.parametrize("override, gpu, expected", [
    ([], True, True), ([], False, False),
    (["inference.compile=false"], True, False), (["inference.compile=true"], False, True),
])
def test_engines_compile_on_a_gpu_unless_told(monkeypatch, override, gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert compiled(load_config("default", override).inference) is expected
