"""The sampler's forward passes: full (optionally returning every layer's keys/values) or a window against a cache.

Caches, both refreshed by a full forward at the start of every block (the model is bidirectional, so cached
keys/values go stale as tokens are revealed; refreshing once per block bounds that, as Fast-dLLM does):
- `prefix`: the window is the whole generation region; the prompt's keys/values are reused. With static
  shapes inside a loop over blocks the window cannot shrink as Fast-dLLM's suffix does, so it covers the
  finished blocks too (recomputed, hence exact there) and costs gen_length tokens per step.
- `dual`: the window is the current block only; the prompt, the finished blocks and the still-masked suffix
  come from the cache (Fast-dLLM's DualCache); block_length tokens per step.
The window's fresh keys/values overwrite the cache's at its columns and it attends to the whole sequence, so
with every cached entry fresh the window's logits equal the full forward's (tested). Shapes are static and
the window start is traced: one compiled loop body serves every block.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.models import registry as model_lib

CACHES = ("none", "prefix", "dual")


def window_width(cache: str, gen_length: int, block_length: int) -> int:
    """Columns a cached step recomputes."""
    return gen_length if cache == "prefix" else block_length


def window_start(cache: str, prompt_width: int, block, block_length: int):
    """First recomputed column: the generation region's (prefix) or the current block's (dual)."""
    return prompt_width if cache == "prefix" else prompt_width + block * block_length


def with_guidance(x, positions, segment_ids, prompt_mask, mask_id: int, cfg_scale: float):
    """With classifier-free guidance, the batch doubled: rows as given, then rows with the prompt masked."""
    if cfg_scale <= 0:
        return x, positions, segment_ids
    return (jnp.concatenate([x, jnp.where(prompt_mask, mask_id, x)]), jnp.concatenate([positions, positions]),
            jnp.concatenate([segment_ids, segment_ids]))


def combine_guidance(logits, cfg_scale: float):
    """un + (cfg + 1) * (cond - un) over the doubled batch; the logits unchanged without guidance."""
    if cfg_scale <= 0:
        return logits
    cond, un = jnp.split(logits, 2)
    return un + (cfg_scale + 1.0) * (cond - un)


def guided_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id: int, cfg_scale: float, *,
                  return_kv: bool = False):
    """(logits [B, T, V], every layer's keys/values over the (guidance-doubled) batch, or None)."""
    args = with_guidance(x, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
    out = model_lib.apply(graphdef, params, *args, return_kv=return_kv)
    logits, kv = out if return_kv else (out, None)
    return combine_guidance(logits, cfg_scale), kv


def window_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id: int, cfg_scale: float,
                  kv, start, width: int):
    """Logits [B, width, V] of columns start..start+width-1, recomputing only them against the cache `kv`."""
    x, positions, segment_ids = with_guidance(x, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, width, axis=1)  # noqa: E731
    logits = model_lib.apply(graphdef, params, cut(x), cut(positions), cut(segment_ids), cache_kv=kv,
                             cache_segment_ids=segment_ids, window_start=start)
    return combine_guidance(logits, cfg_scale)
