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
- `direct`: the layers keep vLLM's oneDNN matmuls (`packed_weights` finds them);
  a load packs each again (`repack`) from its checkpoint tensor, or for a fused
  layer from its parts copied into one staging buffer reused layer after layer
  (no second copy of the weights is kept) - the same kernel and packing vLLM's
  reload ends in, so answers stay batch-invariant and equal to the reload's, bit
  for bit. Parameters vLLM keeps (norms, embeddings) are copied into as above.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.model.weights import as_tensor


ONEDNN_CACHE = 32
"""Primitive cache size of a oneDNN matmul, as vLLM's `dispatch_cpu_unquantized_gemm` creates them."""


@dataclass
class PackedLayer:
    """A CPU linear layer whose weight vLLM packed into a oneDNN matmul and emptied: a load packs it
    again from its checkpoint parts (rows, in order), one staging buffer at a time."""
    matmul: Any
    shape: tuple[int, int]
    dtype: torch.dtype
    parts: dict[str, int]

    def load(self, sources: Mapping[str, torch.Tensor], staging: torch.Tensor) -> None:
        [first, *others] = self.parts
        if not others and sources[first].dtype == self.dtype:
            repack(self.matmul, sources[first])  # packing reads it: no copy first
            return
        weight = staging[: self.shape[0] * self.shape[1]].view(self.shape)
        for view, name in zip(weight.split(list(self.parts.values())), self.parts):
            view.copy_(sources[name])
        repack(self.matmul, weight)


class DirectWeights:
    def __init__(self, views: dict[str, torch.Tensor], tied_lm_head: bool = False,
                 layers: list[PackedLayer] | None = None, repacked: list[tuple[Any, torch.Tensor]] | None = None):
        self.views = views
        self.tied_lm_head = tied_lm_head
        self.layers = layers or []
        self.repacked = repacked or []
        """(oneDNN matmul, the parameter it is packed from, which it keeps): packed again after the copies."""
        self.shapes = {name: tuple(view.shape) for name, view in views.items()}
        self.shapes.update({name: (rows, layer.shape[1]) for layer in self.layers for name, rows in layer.parts.items()})
        largest = max(self.layers, key=lambda layer: layer.shape[0] * layer.shape[1], default=None)
        self.staging = torch.empty(0) if largest is None else torch.empty(largest.shape, dtype=largest.dtype).view(-1)

    def load(self, weights: Mapping[str, Any]) -> int:
        """Copy every tensor of `weights` into its view (and pack the oneDNN layers again); returns the
        bytes loaded. Checked whole first: a state that does not match raises ValueError and changes nothing."""
        sources = {name: as_tensor(value) for name, value in weights.items()}
        self._check(sources)
        with torch.no_grad():
            for name, view in self.views.items():
                view.copy_(sources[name])
            for layer in self.layers:
                layer.load(sources, self.staging)
        for matmul, weight in self.repacked:
            repack(matmul, weight)
        return sum(sources[name].numel() * sources[name].element_size() for name in self.shapes)

    def _check(self, sources: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(name for name in set(sources) - set(self.shapes) if not self._ignored(name))
        missing = sorted(set(self.shapes) - set(sources))
        if unknown or missing:
            raise ValueError(f"weights do not match the engine's model: unknown {unknown[:3]}, missing {missing[:3]}")
        for name, shape in self.shapes.items():
            if tuple(sources[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(sources[name].shape)}, the engine's is {shape}")

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


Matmul = tuple[str, torch.nn.Module, Any]
"""(module name, module, its oneDNN matmul), as `packed_weights` finds them."""


def plan(model: torch.nn.Module, matmuls: list[Matmul] | None = None) -> DirectWeights:
    """The copy plan for a plannable vLLM model: a view of the live parameter for every checkpoint
    name, except the layers of `matmuls` whose weight vLLM emptied, which are packed again instead."""
    fused = getattr(model, "packed_modules_mapping", {}) or {}
    emptied = {name: (module, matmul) for name, module, matmul in matmuls or [] if not module.weight.numel()}
    views: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        if module_name in emptied:
            continue
        parts = _parts(module_name, leaf, model.get_submodule(module_name), fused, param.shape[0])
        views.update(zip(parts, param.data.split(list(parts.values()))))
    layers = [_packed_layer(name, module, matmul, fused) for name, (module, matmul) in emptied.items()]
    kept = [(matmul, module.weight) for name, module, matmul in matmuls or [] if name not in emptied]
    return DirectWeights(views, tied_lm_head="lm_head.weight" not in views, layers=layers, repacked=kept)


def _parts(module_name: str, leaf: str, module: torch.nn.Module, fused: Mapping[str, list[str]],
           rows: int) -> dict[str, int]:
    """The checkpoint names of a module's `leaf` tensor (weight, bias) and their rows, in order: one
    name, or for a fused module (`qkv_proj`: q, k, v) one per part at its `output_sizes`."""
    parent, _, last = module_name.rpartition(".")
    if last not in fused:
        return {f"{module_name}.{leaf}": rows}
    sizes = list(module.output_sizes)
    if len(sizes) != len(fused[last]) or sum(sizes) != rows:
        raise ValueError(f"{module_name}.{leaf}: parts {fused[last]} of sizes {sizes} do not fill its {rows} rows")
    prefix = f"{parent}." if parent else ""
    return {f"{prefix}{part}.{leaf}": size for part, size in zip(fused[last], sizes)}


def _packed_layer(name: str, module: torch.nn.Module, matmul: Any, fused: Mapping[str, list[str]]) -> PackedLayer:
    shape = (module.output_size_per_partition, module.input_size_per_partition)
    return PackedLayer(matmul, shape, module.weight.dtype, _parts(name, "weight", module, fused, shape[0]))


def packed_weights(model: torch.nn.Module) -> list[Matmul] | None:
    """For `direct` on CPU: every layer's oneDNN matmul (for `plan`). None where a layer computes
    another way (sgl or zen kernels): vLLM's reload stays."""
    found = []
    for name, module in model.named_modules():
        linear = getattr(module, "cpu_linear", None)
        if linear is None or linear is torch.nn.functional.linear:
            continue
        matmuls = [cell.cell_contents for cell in getattr(linear, "__closure__", None) or ()
                   if hasattr(cell.cell_contents, "handler_tensor")]
        if len(matmuls) != 1:
            return None
        found.append((name, module, matmuls[0]))
    return found


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
