"""Our param layout against PyTorch's, per tensor: names through a format, shapes, and the transposes between.

PyTorch linear weights are [out, in]; ours are [in, ...] with heads split out and layers stacked, so each
tensor is a reshape and a transpose. A planned tensor names the arrays of ours it is made of (`sources`: a
path into the params dict and an index into that stacked leaf, e.g. (("moe_blocks", "expert_gate"), (layer,
expert))) and the `kind` of conversion: most are one array each way; LLaDA2.0's fused query_key_value is made
of three, and stacked expert files hold every expert of a layer in one tensor. Every supported format uses
the rotate-half RoPE layout, so q/k need no permutation. Optional tensors (q/k/v biases [heads, head_dim] ->
[heads * head_dim], QK-norm weights, the head absent when it is tied to the embedding) are planned only when
the model has them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llada_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Planned:
    """One tensor of a Hugging Face file: its name and [out, in] shape, the arrays of ours it holds, and how."""
    name: str
    shape: tuple
    sources: tuple  # ((params path, index into the leaf), ...)
    kind: str  # copy | transpose | heads_in | heads_out | fused_qkv | experts_transpose | flatten | zeros


def to_torch(kind: str, arrays: list) -> np.ndarray:
    """Our arrays (each already indexed to one layer / expert) as the PyTorch tensor of that kind."""
    a = arrays[0] if arrays else None
    if kind == "copy":
        return a
    if kind == "transpose":
        return a.T
    if kind == "heads_in":  # [d, heads, hd] -> [heads*hd, d]
        return a.reshape(a.shape[0], -1).T
    if kind == "heads_out":  # [heads, hd, d] -> [d, heads*hd]
        return a.reshape(-1, a.shape[-1]).T
    if kind == "fused_qkv":  # q [d, n, hd], k, v [d, kv, hd] -> [(n + 2 kv) * hd, d]
        return np.concatenate([x.reshape(x.shape[0], -1).T for x in arrays], axis=0)
    if kind == "experts_transpose":  # [E, in, out] -> [E, out, in]
        return np.swapaxes(a, 1, 2)
    if kind == "flatten":  # q/k/v bias [heads, hd] -> [heads*hd]
        return a.reshape(-1)
    raise ValueError(f"unknown tensor kind {kind!r}")


def from_torch(kind: str, array: np.ndarray, ours: list[tuple]) -> list[np.ndarray]:
    """Inverse of to_torch: the PyTorch tensor as our arrays of shapes `ours` (one per source)."""
    if kind == "copy":
        return [array.reshape(ours[0])]
    if kind in ("transpose", "heads_in", "heads_out"):
        return [array.T.reshape(ours[0])]
    if kind == "flatten":
        return [array.reshape(ours[0])]
    if kind == "fused_qkv":
        sizes = np.cumsum([int(np.prod(s[1:])) for s in ours])[:-1]
        return [part.T.reshape(s) for part, s in zip(np.split(array, sizes, axis=0), ours)]
    if kind == "experts_transpose":
        return [np.swapaxes(array, 1, 2)]
    if kind == "zeros":
        return []
    raise ValueError(f"unknown tensor kind {kind!r}")


def torch_shape(kind: str, ours: list[tuple]) -> tuple:
    """The PyTorch shape of a tensor of `kind` made of arrays shaped `ours`."""
    dummy = [np.zeros(s, np.int8) for s in ours]
    return tuple(to_torch(kind, dummy).shape)


# kinds of the per-layer keys every format shares (dense and mixture-of-experts layers alike)
LAYER_KINDS = {"q_proj": "heads_in", "k_proj": "heads_in", "v_proj": "heads_in", "attn_out": "heads_out",
               "ff_proj": "transpose", "up_proj": "transpose", "ff_out": "transpose", "router": "transpose",
               "shared_gate": "transpose", "shared_up": "transpose", "shared_down": "transpose",
               "q_bias": "flatten", "k_bias": "flatten", "v_bias": "flatten"}
TOP_KINDS = {"wte": "copy", "ln_f": "copy", "ff_out": "transpose"}


def leaf_shape(shapes: dict, path: tuple, index: tuple) -> tuple:
    """The shape of our leaf at `path` after `index` picks one layer (and expert) of it."""
    node = shapes
    for part in path:
        node = node[part]
    return tuple(node[len(index):])


def planned(name: str, kind: str, shapes: dict, *sources) -> Planned:
    """A Planned tensor whose torch shape follows from the sources' shapes."""
    ours = [leaf_shape(shapes, path, index) for path, index in sources]
    return Planned(name, torch_shape(kind, ours), tuple(sources), kind)


def tensor_name(fmt, key: str, layer: int | None) -> str:
    """A format's name for our tensor; layer names get ".weight" unless the format spells the suffix (biases)."""
    if layer is None:
        return fmt.TOP_NAMES[key]
    name = fmt.LAYER_NAMES[key]
    return fmt.LAYER_PREFIX.format(i=layer) + name + ("" if name.endswith((".weight", ".bias")) else ".weight")


def planned_tensors(cfg: ModelConfig, shapes: dict, fmt) -> list[Planned]:
    """Every tensor of the format's files in file order: the top-level tensors, then each layer parameter for every
    layer. Key-major order lets export restore one stacked [layers, ...] leaf at a time. A format with its own
    layout (the mixture-of-experts ones) plans its tensors itself."""
    if hasattr(fmt, "planned_tensors"):
        return fmt.planned_tensors(cfg, shapes)
    out = [planned(tensor_name(fmt, key, None), TOP_KINDS[key], shapes, ((key,), ()))
           for key in fmt.TOP_NAMES if key in shapes]  # no ff_out when the head is tied to the embedding
    for key in layer_keys(fmt, shapes):
        kind = LAYER_KINDS.get(key, "copy")
        out += [planned(tensor_name(fmt, key, i), kind, shapes, (("blocks", key), (i,))) for i in range(cfg.n_layers)]
    return out


def layer_keys(fmt, shapes: dict) -> list[str]:
    """The format's per-layer keys this model has (biases and QK-norm only with those options), in its order."""
    return [key for key in fmt.LAYER_NAMES if key in shapes["blocks"]]


def param_shapes(cfg: ModelConfig) -> dict:
    """Our params' shapes (a nested dict of tuples) without allocating them."""
    import jax

    from llada_jax.models import registry as model_lib

    _, abstract, _ = model_lib.split_model(model_lib.abstract_model(cfg))
    return jax.tree.map(lambda a: tuple(a.shape), abstract)
