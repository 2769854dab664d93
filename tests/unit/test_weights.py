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
    `cpu_linear` calls, the parameter emptied; `output_sizes` for a fused one."""

    def __init__(self, weight: torch.Tensor, output_sizes: list[int] | None = None):
        from vllm import _custom_ops as ops

        super().__init__()
        self.output_size_per_partition, self.input_size_per_partition = weight.shape
        self.output_sizes = output_sizes or [weight.shape[0]]
        matmul = ops.create_onednn_mm(weight.t(), 32)
        self.cpu_linear = lambda x, weight, bias: ops.onednn_mm(matmul, x, bias)
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x):
        return self.cpu_linear(x, self.weight, None)


class _PackedToy(torch.nn.Module):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.qkv_proj = _PackedLinear(torch.randn(40, 32), [24, 8, 8])
        self.attn.o_proj = _PackedLinear(torch.randn(32, 24))
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


@pytest.fixture
def ops():
    """vLLM's CPU ops, with the oneDNN matmul the packed layers use."""
    ops = pytest.importorskip("vllm._custom_ops")
    if not ops._supports_onednn:
        pytest.skip("this vLLM build has no oneDNN matmul")
    return ops


def test_a_direct_load_packs_the_onednn_matmuls_again_so_they_compute_with_the_new_weights(ops):
    from runtime.model.engine_weights import packed_weights, plan

    model = _PackedToy()
    new = {"attn.q_proj.weight": torch.randn(24, 32), "attn.k_proj.weight": torch.randn(8, 32),
           "attn.v_proj.weight": torch.randn(8, 32), "attn.o_proj.weight": torch.randn(32, 24, dtype=torch.float64),
           "norm.weight": torch.arange(3.0)}
    x, y = torch.randn(16, 32), torch.randn(16, 24)
    before = model.attn.qkv_proj(x)
    direct = plan(model, packed_weights(model))
    assert direct.load(shareable(new)) == sum(t.numel() * t.element_size() for t in new.values())
    qkv = torch.cat([new["attn.q_proj.weight"], new["attn.k_proj.weight"], new["attn.v_proj.weight"]])
    after = model.attn.qkv_proj(x)
    assert torch.allclose(after, x @ qkv.t(), atol=1e-4) and not torch.allclose(after, before)
    assert torch.equal(after, ops.onednn_mm(ops.create_onednn_mm(qkv.t(), 32), x, None)), "the packing vLLM makes"
    assert torch.allclose(model.attn.o_proj(y), y @ new["attn.o_proj.weight"].float().t(), atol=1e-4), "converted"
    assert model.norm.weight.tolist() == [0, 1, 2]
    assert torch.equal(model.attn.qkv_proj(x[:1])[0], after[0]), "a row's result does not depend on its batch"
    assert model.attn.qkv_proj.weight.numel() == 0, "no second copy of the weights is kept"


def test_a_direct_load_that_does_not_match_a_packed_layer_changes_nothing(ops):
    from runtime.model.engine_weights import packed_weights, plan

    model = _PackedToy()
    x = torch.randn(2, 32)
    before = model.attn.qkv_proj(x)
    state = {"attn.q_proj.weight": torch.randn(24, 32), "attn.k_proj.weight": torch.randn(8, 32),
             "attn.v_proj.weight": torch.randn(9, 32), "attn.o_proj.weight": torch.randn(32, 24),
             "norm.weight": torch.ones(3)}
    with pytest.raises(ValueError, match="attn.v_proj.weight: shape \\(9, 32\\)"):
        plan(model, packed_weights(model)).load(state)
    assert torch.equal(model.attn.qkv_proj(x), before) and not model.norm.weight.any()


def test_a_layer_computing_another_way_keeps_the_reload():
    from runtime.model.engine_weights import packed_weights

    model = torch.nn.Module()
    model.proj = torch.nn.Module()
    packed = torch.zeros(4, 4)
    model.proj.cpu_linear = lambda x, weight, bias: x @ packed  # sgl/zen kernels close over their own packing
    model.proj.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    assert packed_weights(model) is None
