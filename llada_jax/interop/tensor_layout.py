"""Our param layout against PyTorch's, per tensor: names through a format, shapes, and the transposes between.

PyTorch linear weights are [out, in]; ours are [in, ...] with heads split out and layers stacked, so each
tensor is a reshape and a transpose. Every supported format uses the rotate-half RoPE layout, so q/k need no
permutation. Optional tensors (q/k/v biases [heads, head_dim] -> [heads * head_dim], QK-norm weights, the head
absent when it is tied to the embedding) are planned only when the model has them.
"""
from __future__ import annotations

import numpy as np

from llada_jax.config import ModelConfig

BIASES = ("q_bias", "k_bias", "v_bias")


def tensor_name(fmt, key: str, layer: int | None) -> str:
    """A format's name for our tensor; layer names get ".weight" unless the format spells the suffix (biases)."""
    if layer is None:
        return fmt.TOP_NAMES[key]
    name = fmt.LAYER_NAMES[key]
    return fmt.LAYER_PREFIX.format(i=layer) + name + ("" if name.endswith((".weight", ".bias")) else ".weight")


def torch_shape(key: str, ours: tuple[int, ...], top: bool) -> tuple[int, ...]:
    """Shape of our (per-layer) array in PyTorch's [out, in] layout."""
    if top:
        return (ours[1], ours[0]) if key == "ff_out" else ours  # head [d, V] -> [V, d]; wte and ln_f as they are
    if key in ("q_proj", "k_proj", "v_proj"):  # [d, heads, hd] -> [heads*hd, d]
        return (ours[1] * ours[2], ours[0])
    if key in BIASES:  # [heads, hd] -> [heads*hd]
        return (ours[0] * ours[1],)
    if key == "attn_out":  # [heads, hd, d] -> [d, heads*hd]
        return (ours[2], ours[0] * ours[1])
    if key in ("ff_proj", "up_proj", "ff_out"):
        return (ours[1], ours[0])
    return ours  # norms


def to_torch(key: str, array: np.ndarray, top: bool) -> np.ndarray:
    if top:
        return array.T if key == "ff_out" else array
    if key in ("q_proj", "k_proj", "v_proj"):
        return array.reshape(array.shape[0], -1).T
    if key in BIASES:
        return array.reshape(-1)
    if key == "attn_out":
        return array.reshape(-1, array.shape[-1]).T
    if key in ("ff_proj", "up_proj", "ff_out"):
        return array.T
    return array


def from_torch(key: str, array: np.ndarray, ours: tuple[int, ...], top: bool) -> np.ndarray:
    """Inverse of to_torch, into our per-layer shape `ours`."""
    if top:
        return array.T if key == "ff_out" else array
    if key in ("q_proj", "k_proj", "v_proj", "attn_out"):
        return array.T.reshape(ours)
    if key in BIASES:
        return array.reshape(ours)
    if key in ("ff_proj", "up_proj", "ff_out"):
        return array.T
    return array


def planned_tensors(cfg: ModelConfig, shapes: dict, fmt):
    """[(hf name, our key, layer or None, torch shape)] in file order: the top-level tensors, then each layer
    parameter for every layer. Key-major order lets export restore one stacked [layers, ...] leaf at a time."""
    out = [(tensor_name(fmt, key, None), key, None, torch_shape(key, shapes[key], True))
           for key in ("wte", "ln_f", "ff_out") if key in shapes]  # no ff_out when the head is tied
    for key in layer_keys(fmt, shapes):
        for i in range(cfg.n_layers):
            out.append((tensor_name(fmt, key, i), key, i, torch_shape(key, shapes["blocks"][key][1:], False)))
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
