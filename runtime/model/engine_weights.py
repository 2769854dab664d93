"""Weights copied straight into a running engine's parameters: one copy per tensor, no loader.

vLLM's own reload (`reload_weights`) re-materialises every layer, runs each
parameter's Python weight loader and, on CPU, repacks every linear layer for
oneDNN: ~20x a memcpy of the state at 10M parameters. A `DirectWeights` plan is
built once per engine: for every checkpoint tensor name, the view of the live
parameter it lands in (fused layers such as `qkv_proj` take their parts at the
offsets of `output_sizes`). A load is then one `copy_` per tensor.

On CPU vLLM packs every linear layer's weight for oneDNN and empties the
parameter; the packed matmul keeps its own copy, which no copy into the
parameters reaches. Two ways here (`inference.weight_load`):
- `direct`: the layers keep vLLM's oneDNN matmuls; `packed_weights` gives each
  emptied layer a plain weight to copy into, and after every load each matmul is
  packed again from it (`repack`) - the same kernel and packing vLLM's reload
  ends in, so answers stay batch-invariant and equal to the reload's, bit for bit.
- `plain`: `keep_plain_weights` makes vLLM build the layers on F.linear over the
  plain weight (`plain_linears` converts any layer still packed after the build):
  no re-pack, but F.linear's sums depend on the batch.

Contract: a load covers every planned parameter or changes nothing (a partial
state would leave old weights beside new ones); names it does not know fail it.
Only unsharded, unquantized models are planned (`plannable`); the caller keeps vLLM's reload
for the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from runtime.model.weights import as_tensor


ONEDNN_CACHE = 32
"""Primitive cache size of a oneDNN matmul, as vLLM's `dispatch_cpu_unquantized_gemm` creates them."""


class DirectWeights:
    def __init__(self, views: dict[str, torch.Tensor], tied_lm_head: bool = False,
                 packed: list[tuple[Any, torch.Tensor]] | None = None):
        self.views = views
        self.tied_lm_head = tied_lm_head
        self.packed = packed or []
        """(oneDNN matmul, the weight it is packed from): packed again after every load."""

    def load(self, weights: Mapping[str, Any]) -> int:
        """Copy every tensor of `weights` into its view; returns the bytes copied. Checked whole first:
        a state that does not match raises ValueError and changes nothing."""
        sources = {name: as_tensor(value) for name, value in weights.items()}
        self._check(sources)
        copied = 0
        with torch.no_grad():
            for name, view in self.views.items():
                view.copy_(sources[name])
                copied += view.numel() * view.element_size()
        for matmul, weight in self.packed:
            repack(matmul, weight)
        return copied

    def _check(self, sources: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(name for name in set(sources) - set(self.views) if not self._ignored(name))
        missing = sorted(set(self.views) - set(sources))
        if unknown or missing:
            raise ValueError(f"weights do not match the engine's model: unknown {unknown[:3]}, missing {missing[:3]}")
        for name, view in self.views.items():
            if sources[name].shape != view.shape:
                raise ValueError(f"{name}: shape {tuple(sources[name].shape)}, the engine's is {tuple(view.shape)}")

    def _ignored(self, name: str) -> bool:
        """Checkpoint names the engine has no parameter for: a tied head, rotary frequencies it computes."""
        return (self.tied_lm_head and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq")


PLAIN_METHODS = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod", "NoneType")


def plannable(model: torch.nn.Module) -> bool:
    """Whether every parameter can be planned: no sharded and no quantized layer."""
    for name, _ in model.named_parameters():
        module = model.get_submodule(name.rpartition(".")[0])
        method = type(getattr(module, "quant_method", None)).__name__
        if getattr(module, "tp_size", 1) != 1 or method not in PLAIN_METHODS:
            return False
    return True


def plan(model: torch.nn.Module, matmuls: list[tuple[Any, torch.Tensor]] | None = None) -> DirectWeights:
    """The copy plan for a plannable vLLM model whose weights are plain (after `plain_linears` or
    `packed_weights` on CPU); `matmuls` as `packed_weights` returns them."""
    packed = getattr(model, "packed_modules_mapping", {}) or {}
    views: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        parent, _, fused = module_name.rpartition(".")
        if fused not in packed:
            views[name] = param.data
            continue
        sizes = model.get_submodule(module_name).output_sizes
        if len(sizes) != len(packed[fused]) or sum(sizes) != param.shape[0]:
            raise ValueError(f"{name}: parts {packed[fused]} of sizes {sizes} do not fill its {param.shape[0]} rows")
        for part, view in zip(packed[fused], param.data.split(sizes)):
            views[f"{parent}.{part}.{leaf}"] = view
    return DirectWeights(views, tied_lm_head="lm_head.weight" not in views, packed=matmuls)


def packed_weights(model: torch.nn.Module) -> list[tuple[Any, torch.Tensor]] | None:
    """For `direct` on CPU: every layer's (oneDNN matmul, weight to re-pack it from), after giving each
    layer whose weight vLLM emptied a plain one (zeros: load the checkpoint into it next). None, and
    nothing changed, where a layer computes another way (sgl or zen kernels): vLLM's reload stays."""
    found = []
    for module in model.modules():
        linear = getattr(module, "cpu_linear", None)
        if linear is None or linear is torch.nn.functional.linear:
            continue
        matmuls = [cell.cell_contents for cell in getattr(linear, "__closure__", None) or ()
                   if hasattr(cell.cell_contents, "handler_tensor")]
        if len(matmuls) != 1:
            return None
        found.append((module, matmuls[0]))
    for module, _ in found:
        if not module.weight.numel():
            shape = (module.output_size_per_partition, module.input_size_per_partition)
            module.weight = torch.nn.Parameter(torch.zeros(shape, dtype=module.weight.dtype), requires_grad=False)
    return [(matmul, module.weight) for module, matmul in found]


def repack(matmul: Any, weight: torch.Tensor) -> None:
    """Pack `matmul` (vLLM's oneDNN handler) again from `weight`, in place: the handler object and
    the tensor holding its pointer (which a compiled graph may hold) stay, the pointer in it changes,
    and the old packed matmul is released."""
    fresh = torch.ops._C.create_onednn_mm_handler(weight.t(), ONEDNN_CACHE)
    old = int(matmul.handler_tensor.item())
    matmul.handler_tensor.fill_(fresh)
    matmul.dtor(old)


def keep_plain_weights() -> bool:
    """Before an engine is built in this process: vLLM's CPU linear layers then keep their weight and
    read it through F.linear (its fallback) instead of packing it for oneDNN, so a copy into the
    parameters reaches the matmuls, compiled ones too. False where this vLLM has no such switch
    (`plain_linears` then converts the built model)."""
    from vllm import _custom_ops as ops

    if not hasattr(ops, "_supports_onednn"):
        return False
    ops._supports_onednn = False
    return True


def plain_linears(model: torch.nn.Module) -> int:
    """Give every CPU linear layer whose weight was packed away a plain weight read by `F.linear`;
    returns how many. The new weights are zeros: load the checkpoint into them next (`load_checkpoint`)."""
    changed = 0
    for module in model.modules():
        if not hasattr(module, "cpu_linear") or module.weight.numel():
            continue
        shape = (module.output_size_per_partition, module.input_size_per_partition)
        module.weight = torch.nn.Parameter(torch.zeros(shape, dtype=module.weight.dtype), requires_grad=False)
        module.cpu_linear = _linear
        changed += 1
    return changed


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def load_checkpoint(direct: DirectWeights, model_dir: str | Path) -> int:
    """Load a safetensors checkpoint directory through the plan; returns the bytes copied."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(shard))
    if "lm_head.weight" in direct.views and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return direct.load(state)
