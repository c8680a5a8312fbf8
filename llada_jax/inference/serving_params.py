"""Serving weights in the compute dtype: cast once at load, never per forward pass.

Training keeps float32 master params and the model casts each weight to the compute dtype inside every
forward pass. For inference that cast is pure overhead (and float32 params take twice the memory and
bandwidth), so `sample`, `score` and the benchmarks cast the floating-point params once after loading.
"auto" picks bfloat16 on accelerators and leaves the params as stored on CPU (no fast bfloat16 matmuls).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CHOICES = ("auto", "float32", "bfloat16")


def serving_dtype(choice: str, platform: str | None = None):
    """The dtype to cast params to (None: keep them as stored) for --param-dtype=`choice` on `platform`."""
    from llada_jax.config import ConfigError

    if choice not in CHOICES:
        raise ConfigError(f"--param-dtype={choice} is unknown; use one of {', '.join(CHOICES)}")
    if choice == "auto":
        platform = platform or jax.default_backend()
        return jnp.bfloat16 if platform in ("gpu", "tpu", "cuda", "rocm") else None
    return jnp.dtype(choice)


def cast_params(params, dtype, keep=()):
    """Every floating-point leaf as `dtype` (sharding kept), except leaves named in `keep` (a mixture of experts'
    routers, which decide in float32); integer leaves and dtype None leave params as they are."""
    if dtype is None:
        return params

    def cast(path, a):
        name = getattr(path[-1], "key", None) if path else None
        if name in keep or not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == dtype:
            return a
        return a.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)
