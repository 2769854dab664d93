"""Where a trainer shard trains, and the settings that cannot work on GPUs refused at load.

The GPU is faked here (no GPU on CI): what is tested is the choice around it, from what Ray
assigned to the shard; the training itself is tested on CPU by the cluster tests."""

import pytest
import torch

from actors.trainer_shard import on_host, shard_device
from runtime.core.config import load_config
from runtime.core.errors import ConfigError


def test_without_a_gpu_a_shard_trains_on_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert shard_device() == torch.device("cpu")


@pytest.mark.parametrize("share", [1.0, 0.2])
def test_a_shard_given_a_gpu_trains_on_it(on_gpu, share):
    on_gpu(share)
    assert shard_device() == torch.device("cuda", 0)


def test_a_shard_given_no_gpu_stays_on_the_cpu_though_one_is_visible(on_gpu):
    on_gpu(0.0)
    assert shard_device() == torch.device("cpu")


def test_on_host_keeps_the_structure_and_does_not_copy_host_tensors():
    weight, step = torch.ones(3), torch.tensor(4)
    state = {"model": {"w": weight}, "optimizer": {"state": {0: {"step": step}}, "param_groups": [{"lr": 0.1}]},
             "args": (0.5, "x"), "step": 7}
    moved = on_host(state)
    assert moved == {**state, "model": moved["model"], "optimizer": moved["optimizer"]}
    assert moved["model"]["w"] is weight and moved["optimizer"]["state"][0]["step"] is step
    assert moved["optimizer"]["param_groups"] == [{"lr": 0.1}] and moved["args"] == (0.5, "x")


def test_nccl_without_gpu_shards_is_refused_with_the_fields():
    with pytest.raises(ConfigError, match=r"train\.backend=nccl needs GPU shards: set placement\.trainer\.num_gpus"):
        load_config("default", ["train.backend=nccl"])


@pytest.mark.parametrize("extra", [[], ["placement.trainer.replicas=1", "placement.trainer.spares=1"]])
def test_shards_that_may_share_a_gpu_under_nccl_are_refused(extra):
    with pytest.raises(ConfigError, match=r"placement\.trainer\.num_gpus=0\.5 lets shards share a GPU.*train\.backend=gloo"):
        load_config("default", ["placement.trainer.num_gpus=0.5", *extra])


@pytest.mark.parametrize("overrides", [["placement.trainer.num_gpus=0.5", "placement.trainer.replicas=1"],
                                       ["placement.trainer.num_gpus=0.5", "train.backend=gloo"],
                                       ["placement.trainer.num_gpus=1"]])
def test_gpu_shards_that_can_form_a_group_load(overrides):
    assert load_config("default", overrides).placement.trainer.num_gpus > 0
