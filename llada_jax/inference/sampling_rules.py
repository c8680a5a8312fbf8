"""Which masked tokens one reverse-process step reveals: pure functions of logits and confidences.

Prediction and confidence follow the official generate.py: the prediction is a Gumbel-max sample (argmax at
temperature 0) and the confidence of `low_confidence` remasking is the prediction's probability under the
FULL softmax of the logits. The one deliberate difference: the mask id is never predicted (an untrained
model could otherwise "reveal" a mask). It is removed from the argmax only, never from the softmax, so the
confidences, hence the reveal order, are the official ones whenever the official code would not have
predicted a mask either.

`transfer_schedule` spreads a block's masks over its steps and `reveal_columns` applies one step to the
decoding state; both samplers (sampling.py, block_sampling.py) share them.

Three rules choose the tokens, each per row and inside the jit:
- the official schedule: the k[b] most confident masked tokens of the current block;
- `threshold`: every one whose confidence exceeds it, and at least the most confident one;
- `factor` (Fast-dLLM's factor rule): the n most confident, n the largest count such that the i-th most
  confident has confidence >= 1 - factor / (i + 1) for every i <= n, and at least one.

Numerics: float64 when x64 is enabled (the official code's dtype), float32 otherwise (TPU has no float64);
Gumbel-max in log space, argmax(logits - T * log(-log u)) == argmax(exp(logits) / (-log u)^T), which
cannot overflow.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def float_dtype():
    """float64 when x64 is enabled (CPU/GPU with jax_enable_x64), float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def predict(logits, key, temperature: float, mask_id: int):
    """Gumbel-max sample (argmax at temperature 0) over every id except `mask_id`."""
    logits = logits.astype(float_dtype())
    if temperature > 0:
        u = jax.random.uniform(key, logits.shape, logits.dtype, minval=jnp.finfo(logits.dtype).tiny, maxval=1.0)
        logits = logits - temperature * jnp.log(-jnp.log(u))
    return jnp.argmax(logits.at[..., mask_id].set(NEG_INF), axis=-1)


def confidence(logits, prediction, key, remasking: str):
    """low_confidence: the prediction's probability under the full softmax; random: uniform noise."""
    if remasking == "random":
        return jax.random.uniform(key, prediction.shape, float_dtype())
    log_probs = jax.nn.log_softmax(logits.astype(float_dtype()), axis=-1)
    return jnp.exp(jnp.take_along_axis(log_probs, prediction[..., None], axis=-1)[..., 0])


def top_k_mask(conf: jax.Array, k: jax.Array) -> jax.Array:
    """True at the k[b] largest entries of each row (ties broken by position)."""
    order = jnp.argsort(-conf, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks < k[:, None]


def threshold_count(conf: jax.Array, threshold: float) -> jax.Array:
    """[B] how many entries exceed the threshold, at least one where any is finite (a candidate)."""
    candidates = jnp.sum(jnp.isfinite(conf), axis=-1)
    return jnp.minimum(jnp.maximum(jnp.sum(conf > threshold, axis=-1), 1), candidates)


def factor_count(conf: jax.Array, factor: float) -> jax.Array:
    """[B] the largest n with sorted_conf[i] >= 1 - factor / (i + 1) for i = 1..n, at least one candidate."""
    ordered = -jnp.sort(-conf, axis=-1)
    rank = jnp.arange(1, conf.shape[-1] + 1, dtype=conf.dtype)
    passes = ordered >= 1.0 - factor / (rank + 1.0)
    leading = jnp.sum(jnp.cumprod(passes, axis=-1), axis=-1)
    candidates = jnp.sum(jnp.isfinite(conf), axis=-1)
    return jnp.minimum(jnp.maximum(leading, 1), candidates)


def reveal_mask(conf, scheduled, *, threshold: float | None, factor: float | None):
    """True where a step reveals: `conf` is -inf except at the candidates (masked, in the current block)."""
    if threshold is not None:
        count = threshold_count(conf, threshold)
    elif factor is not None:
        count = factor_count(conf, factor)
    else:
        count = scheduled
    return top_k_mask(conf, count) & jnp.isfinite(conf)


def transfer_schedule(mask_counts: jax.Array, steps: int) -> jax.Array:
    """[B] masks in a block -> [B, steps] tokens to reveal per step (earlier steps take the remainder)."""
    base = mask_counts[:, None] // steps
    extra = jnp.arange(steps)[None, :] < (mask_counts[:, None] % steps)
    return base + extra.astype(base.dtype)


def reveal_columns(state, logits, start, block_end, scheduled, step_index, *, temperature, remasking, mask_id,
                   threshold, factor):
    """One step's reveals applied to columns start..start+W-1 of the state (x, trace, key), W = the logits'
    width: masked columns before `block_end` are the candidates; the trace records `step_index` where revealed."""
    x, trace, key = state
    key, k_noise, k_conf = jax.random.split(key, 3)
    width = logits.shape[1]
    view = jax.lax.dynamic_slice_in_dim(x, start, width, axis=1)
    columns = start + jnp.arange(width)[None, :]
    prediction = predict(logits, k_noise, temperature, mask_id)
    conf = confidence(logits, prediction, k_conf, remasking)
    conf = jnp.where((view == mask_id) & (columns < block_end), conf, NEG_INF)
    chosen = reveal_mask(conf, scheduled, threshold=threshold, factor=factor)
    view = jnp.where(chosen, prediction.astype(x.dtype), view)
    steps = jnp.where(chosen, step_index, jax.lax.dynamic_slice_in_dim(trace, start, width, axis=1))
    x = jax.lax.dynamic_update_slice_in_dim(x, view, start, axis=1)
    trace = jax.lax.dynamic_update_slice_in_dim(trace, steps.astype(trace.dtype), start, axis=1)
    return x, trace, key


def check_rule(remasking: str, temperature: float, threshold, factor) -> None:
    """One ConfigError sentence for a reveal rule no decoder can honour."""
    from llada_jax.config import ConfigError

    if remasking not in ("low_confidence", "random"):
        raise ConfigError(f"remasking={remasking!r} is unknown; use 'low_confidence' or 'random'")
    if temperature < 0:
        raise ConfigError(f"temperature={temperature} must be >= 0")
    if threshold is not None and factor is not None:
        raise ConfigError("threshold and factor are two parallel-decoding rules; give one of them")
    if factor is not None and factor <= 0:
        raise ConfigError(f"factor={factor} must be positive (Fast-dLLM uses about 1)")
