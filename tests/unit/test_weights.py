"""Weight versions: chunked wire form round trips, versions only move forward."""

import pytest
import torch

from runtime.core.errors import StaleVersionError
from runtime.model.weights import VersionStore, from_chunks, shareable, to_chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_round_trip_exactly(dtype):
    state = {"a.weight": torch.randn(33, 17).to(dtype), "b.bias": torch.randn(5).to(dtype), "empty": torch.zeros(0)}
    chunks = list(to_chunks(3, state, chunk_bytes=100))
    assert max(len(c["data"]) for c in chunks) <= 100 and len(chunks) > len(state)
    version, back = from_chunks(chunks)
    assert version == 3 and back.keys() == state.keys()
    for name in state:
        assert back[name].dtype == state[name].dtype and torch.equal(back[name], state[name])


def test_versions_only_move_forward_and_old_ones_are_dropped():
    store = VersionStore(keep=2)
    for v in (1, 2, 3):
        store.publish(v, {"w": torch.full((1,), float(v))})
    assert store.latest() == 3 and list(store.versions) == [2, 3]
    with pytest.raises(StaleVersionError, match="version 3 is not newer than 3"):
        store.publish(3, {})
    assert store.get(2)[1]["w"].item() == 2.0


def test_the_newest_version_while_the_broadcaster_is_replaced_is_peer_lost_which_callers_retry():
    from actors.weight_broadcaster import latest_of
    from runtime.core.errors import PeerLost

    def gone():
        raise ValueError("Failed to look up actor with name 'x/broadcaster/0'")  # what ray.get_actor raises

    with pytest.raises(PeerLost, match="broadcaster: not registered under its name"):
        latest_of(gone)()


class _Fused(torch.nn.Module):
    def __init__(self, sizes, width):
        super().__init__()
        self.output_sizes = sizes
        self.weight = torch.nn.Parameter(torch.zeros(sum(sizes), width), requires_grad=False)


class _Toy(torch.nn.Module):
    """The shape of a vLLM model for the plan: a fused projection named in packed_modules_mapping."""
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.qkv_proj = _Fused([4, 2, 2], 3)
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


def _toy_state():
    return {"attn.q_proj.weight": torch.full((4, 3), 1.0), "attn.k_proj.weight": torch.full((2, 3), 2.0),
            "attn.v_proj.weight": torch.full((2, 3), 3.0), "norm.weight": torch.arange(3.0)}


def test_direct_weights_land_in_the_fused_parameter_at_their_offsets():
    from runtime.model.engine_weights import plan, plannable

    model = _Toy()
    assert plannable(model)
    copied = plan(model).load(shareable(_toy_state()))
    assert copied == (8 * 3 + 3) * 4
    assert model.attn.qkv_proj.weight[:, 0].tolist() == [1, 1, 1, 1, 2, 2, 3, 3]
    assert model.norm.weight.tolist() == [0, 1, 2]


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("attn.k_proj.weight"), "missing \\['attn.k_proj.weight'\\]"),
    (lambda s: s.update({"attn.o_proj.weight": torch.ones(1)}), "unknown \\['attn.o_proj.weight'\\]"),
    (lambda s: s.update({"attn.v_proj.weight": torch.ones(3, 3)}), "attn.v_proj.weight: shape \\(3, 3\\)"),
])
def test_a_state_that_does_not_match_the_engine_changes_nothing(change, message):
    from runtime.model.engine_weights import plan

    model = _Toy()
    state = _toy_state()
    change(state)
    with pytest.raises(ValueError, match=message):
        plan(model).load(state)
    assert not model.attn.qkv_proj.weight.any() and not model.norm.weight.any(), "a partial load mixes versions"


class _PackedLinear(torch.nn.Module):
    """A linear layer as vLLM builds it on CPU: the weight packed into a oneDNN matmul that
    `cpu_linear` calls, the parameter emptied."""

    def __init__(self, weight: torch.Tensor):
        from vllm import _custom_ops as ops

        super().__init__()
        self.output_size_per_partition, self.input_size_per_partition = weight.shape
        matmul = ops.create_onednn_mm(weight.t(), 32)
        self.cpu_linear = lambda x, weight, bias: ops.onednn_mm(matmul, x, bias)
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x):
        return self.cpu_linear(x, self.weight, None)


def test_direct_weights_repack_the_onednn_matmul_so_it_computes_with_the_new_weights_batch_invariantly():
    pytest.importorskip("vllm")
    from vllm import _custom_ops as ops

    from runtime.model.engine_weights import packed_weights, plan

    if not ops._supports_onednn:
        pytest.skip("this vLLM build has no oneDNN matmul")
    old, new = torch.randn(48, 32, generator=torch.Generator().manual_seed(1)), torch.randn(48, 32)
    model = torch.nn.Module()
    model.proj = _PackedLinear(old)
    x = torch.randn(16, 32)
    before = model.proj(x)
    packed = packed_weights(model)
    assert model.proj.weight.shape == (48, 32), "the emptied layer got a plain weight to copy into"
    plan(model, packed).load({"proj.weight": new})
    after = model.proj(x)
    assert torch.allclose(after, x @ new.t(), atol=1e-4) and not torch.allclose(after, before)
    assert torch.equal(after, ops.onednn_mm(ops.create_onednn_mm(new.t(), 32), x, None)), "the packing vLLM makes"
    assert torch.equal(model.proj(x[:1])[0], after[0]), "a row's result does not depend on its batch"


def test_a_layer_computing_another_way_keeps_the_reload():
    from runtime.model.engine_weights import packed_weights

    model = torch.nn.Module()
    model.proj = torch.nn.Module()
    packed = torch.zeros(4, 4)
    model.proj.cpu_linear = lambda x, weight, bias: x @ packed  # sgl/zen kernels close over their own packing
    model.proj.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    assert packed_weights(model) is None
    assert model.proj.weight.numel() == 0, "nothing changed"
