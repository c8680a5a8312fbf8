"""Block-diffusion decoding (LLaDA2, BD3-LM): blocks of `block_size` positions are decoded left to right, each
given the finished blocks before it, with an exact KV cache of those blocks.

The rule is the training objective's: b(i) = i // block_size over a row's positions 0..L-1, prompt included.
The prompt and the finished blocks are clean and attend block-causally (i sees j iff b(j) <= b(i)); the block
being decoded sees the clean blocks before it and itself. Nothing after a finished block can change its
keys/values, so they are cached exactly, and a step recomputes only the current block.

A prompt that ends mid-block is handled as LLaDA2's generate does: its last, partial block is the first block
decoded, with the prompt tokens kept as given and the rest masked. Those prompt tokens belong to the block
being decoded (they see its masks, as an SFT prompt sharing its last block with the response does in
training), so they are recomputed with it. At the other end the block holding a row's last answer position
runs past it: those positions stay masks, seen by the answer but never revealed (LLaDA2 reveals and drops
them; keeping them masked marginalises over them and spends no steps on them).

Static shapes for prompts of different lengths: every row is shifted so that block boundaries fall on the same
columns. Row r's prompt (n_r tokens) starts at column B * (F - n_r // B), with F = max(1, P // B) for the prompt
width P, so every row's first decoded block is column block F and its answer starts at column B * F + n_r % B.
Left of a prompt is padding (its own attention segment); the block of a column is column // B in every row and
positions count from each prompt's first token.

With the exact cache (`cache="exact"`) a block costs one pass over 2B columns (the previous block, now final,
written to the cache, together with the current block's first step) and then passes over its B columns; the
prompt's other complete blocks are computed once up front. `cache="none"` recomputes every column at every step:
the reference the tests compare with, token for token. Within a block the steps follow sampling.py: the
schedule (steps_per_block reveals, stopping once the block is revealed), or `threshold` / `factor` until it is.
`eos_id`: stop after the first block at which every row holds an EOS in its answer (finished blocks never change,
so the text up to the EOS is exact).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llada_jax.inference import sampling_rules as rules
from llada_jax.models import registry as model_lib
from llada_jax.models.block_mask import CLEAN, visibility_ranks
from llada_jax.models.output_head import project

BLOCK_CACHES = ("exact", "none")


class Layout(NamedTuple):
    """The decoding canvas: rows shifted so block boundaries share columns (module docstring)."""
    x: jax.Array             # [R, W] padding, prompt, masks
    positions: jax.Array     # [R, W] RoPE positions, 0 at each prompt's first token (0 on padding)
    segment_ids: jax.Array   # [R, W] 1 on the row's tokens, 0 on its left padding
    rank: jax.Array          # [R, W] block index of each column (visibility_ranks turns it into ranks)
    answer_start: jax.Array  # [R] column of each row's first answer position


def canvas_blocks(prompt_width: int, block_size: int, gen_length: int) -> tuple[int, int]:
    """(F, the column block every row's first decoded block lands in; the number of column blocks decodable
    after it, enough for the answer whatever the prompt lengths)."""
    return max(1, prompt_width // block_size), -(-(gen_length + block_size - 1) // block_size)


def layout(prompt, prompt_valid, *, block_size: int, gen_length: int, mask_id: int) -> Layout:
    """The canvas for left-padded prompts [R, P] (`prompt_valid` marks real tokens)."""
    p = prompt.shape[1]
    first, blocks = canvas_blocks(p, block_size, gen_length)
    lengths = jnp.sum(prompt_valid, axis=1, dtype=jnp.int32)[:, None]
    offset = block_size * (first - lengths // block_size)
    columns = jnp.arange(block_size * (first + blocks), dtype=jnp.int32)[None, :]
    pos = columns - offset
    tokens = jnp.take_along_axis(prompt, jnp.clip(p - lengths + pos, 0, p - 1), axis=1)
    x = jnp.where(pos < 0, 0, jnp.where(pos < lengths, tokens, mask_id)).astype(prompt.dtype)
    real = pos >= 0
    rank = jnp.broadcast_to(columns // block_size, x.shape)
    return Layout(x, jnp.where(real, pos, 0), real.astype(jnp.int32), rank, (offset + lengths)[:, 0])


def block_causal(lay: Layout, start, width: int, keys: slice | None = None):
    """Visibility ranks (query rank, key from, key to) for columns start..start+width-1 attending to the
    canvas's columns `keys` (all of them by default) block-causally: every column a clean one of its block
    (block_mask.visibility_ranks), so the block being decoded sees the finished blocks and itself."""
    q_rank, k_from, k_to = visibility_ranks(CLEAN, lay.rank)
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, width, axis=1)  # noqa: E731
    pick = (lambda a: a) if keys is None else (lambda a: a[:, keys])  # noqa: E731
    return cut(q_rank), pick(k_from), pick(k_to)


def prefill(graphdef, params, lay: Layout, *, block_size: int, first: int):
    """The cache (keys, values), each [layers, R, W, K, H]: the clean prompt blocks before column block F - 1
    computed (block-causal), zeros elsewhere until written (no block sees a column before it is written). Block
    F - 1 is left to the first block's first pass, which recomputes it anyway."""
    width, pre = lay.x.shape[1], block_size * (first - 1)
    probe = lambda: model_lib.apply_with_kv(graphdef, params, lay.x[:, :block_size])[1]  # noqa: E731
    kv = jax.tree.map(lambda s: jnp.zeros(s.shape[:2] + (width,) + s.shape[3:], s.dtype), jax.eval_shape(probe))
    if pre == 0:
        return kv
    cut = lambda a: a[:, :pre]  # noqa: E731
    _, fresh = model_lib.apply_with_kv(graphdef, params, cut(lay.x), cut(lay.positions), cut(lay.segment_ids),
                                       visibility=block_causal(lay, 0, pre, slice(0, pre)))
    return jax.tree.map(lambda c, f: jax.lax.dynamic_update_slice_in_dim(c, f.astype(c.dtype), 0, axis=2), kv, fresh)


def block_logits(graphdef, params, x, lay: Layout, kv, start, *, block_size: int, cache: str, commit: bool,
                 edge=None):
    """(logits [R, B, V] of the block at column `start`, the cache, the edge). Without a cache: every column
    recomputed. With it: a pass over the block (or, with `commit`, over the previous block too, whose final
    keys/values it writes to the cache) against the cache.

    A model with model.logit_shift predicts column i from column i - 1 (models/logit_shift.py): the block's first
    column from the previous, finished block's last one (the `edge` [R, d], which the commit pass computes and
    returns for the block's later passes), the others from the block's own columns."""
    shift = model_lib.model_config(graphdef, params).logit_shift
    if cache == "none":
        head, _ = model_lib.apply_with_kv(graphdef, params, x, lay.positions, lay.segment_ids,
                                          visibility=block_causal(lay, 0, x.shape[1]))
        hidden = jax.lax.dynamic_slice_in_dim(head.hidden, start - int(shift), block_size, axis=1)
        return project(hidden, head.weight), kv, edge
    first = start - block_size if commit else start
    width = 2 * block_size if commit else block_size
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, first, width, axis=1)  # noqa: E731
    head, fresh = model_lib.apply_with_kv(graphdef, params, cut(x), cut(lay.positions), cut(lay.segment_ids),
                                          cache_kv=kv, cache_segment_ids=lay.segment_ids, window_start=first,
                                          visibility=block_causal(lay, first, width))
    if commit:
        kv = jax.tree.map(lambda c, f: jax.lax.dynamic_update_slice_in_dim(c, f.astype(c.dtype), first, axis=2),
                          kv, fresh)
        edge = head.hidden[:, block_size - 1]
    hidden = head.hidden[:, width - block_size:]
    if shift:
        hidden = jnp.concatenate([edge[:, None], hidden[:, :-1]], axis=1)
    return project(hidden, head.weight), kv, edge


def _decode_block(graphdef, params, lay: Layout, block, carry, *, block_size, steps_per_block, cache, mask_id,
                  gen_length, **rule):
    """Every step of the block at column block `block` (traced); carry (x, trace, key, passes, kv). Candidates are
    the block's masked answer positions: masks after a row's answer stay masks (the answer's prediction
    marginalises over them) and cost no steps."""
    x, trace, key, passes, kv = carry
    start = block * block_size
    end = jnp.minimum(start + block_size, lay.answer_start + gen_length)[:, None]  # [R, 1]
    logits_of = functools.partial(block_logits, graphdef, params, lay=lay, start=start, block_size=block_size,
                                  cache=cache)
    reveal = functools.partial(rules.reveal_columns, start=start, block_end=end, mask_id=mask_id, **rule)
    columns = start + jnp.arange(block_size)[None, :]
    candidates = lambda x: (jax.lax.dynamic_slice_in_dim(x, start, block_size, axis=1) == mask_id) & (  # noqa: E731
        columns < end)
    masked = lambda x: jnp.any(candidates(x))  # noqa: E731
    schedule = rules.transfer_schedule(jnp.sum(candidates(x), axis=1), steps_per_block)
    scheduled_rule = rule["threshold"] is None and rule["factor"] is None
    logits, kv, edge = logits_of(x=x, kv=kv, commit=cache == "exact")
    state = reveal((x, trace, key), logits, scheduled=schedule[:, 0], step_index=passes)

    def body(c):
        state, i = c[:3], c[3]
        logits, _, _ = logits_of(x=state[0], kv=kv, commit=False, edge=edge)
        return (*reveal(state, logits, scheduled=schedule[:, jnp.minimum(i, steps_per_block - 1)],
                        step_index=passes + i), i + 1)

    def more(c):  # the schedule's steps (its zero-reveal tail skipped), or parallel decoding until revealed
        return masked(c[0]) & ((c[3] < steps_per_block) if scheduled_rule else True)

    x, trace, key, steps = jax.lax.while_loop(more, body, (*state, jnp.int32(1)))
    return x, trace, key, passes + steps, kv


def _finished(x, lay: Layout, block, *, block_size: int, gen_length: int, eos_id):
    """True once every row's answer lies in decoded blocks, or (with eos_id) holds an EOS in them."""
    end = (block + 1) * block_size
    complete = jnp.all(lay.answer_start + gen_length <= end)
    if eos_id is None:
        return complete
    columns = jnp.arange(x.shape[1])[None, :]
    answer = (columns >= lay.answer_start[:, None]) & (columns < lay.answer_start[:, None] + gen_length)
    return complete | jnp.all(jnp.any((x == eos_id) & answer & (columns < end), axis=1))


def _answers(prompt, lay: Layout, x, trace, gen_length: int):
    """(tokens [R, P + G], reveal step [R, P + G]) in the caller's layout: the left-padded prompt as given, then
    each row's answer."""
    take = lay.answer_start[:, None] + jnp.arange(gen_length)[None, :]
    tokens = jnp.concatenate([prompt, jnp.take_along_axis(x, take, axis=1).astype(prompt.dtype)], axis=1)
    steps = jnp.concatenate([jnp.full(prompt.shape, -1, trace.dtype), jnp.take_along_axis(trace, take, axis=1)],
                            axis=1)
    return tokens, steps


@functools.partial(jax.jit, static_argnames=("graphdef", "gen_length", "steps_per_block", "block_size",
                                             "temperature", "remasking", "mask_id", "threshold", "factor", "cache",
                                             "eos_id"))
def _generate_blocks(graphdef, params, prompt, prompt_valid, key, *, gen_length, steps_per_block, block_size,
                     temperature, remasking, mask_id, threshold, factor, cache, eos_id):
    """The block-by-block decoder in one jit: a while loop over column blocks F, F+1, ... (stopping when every
    answer is decoded or holds an EOS), each block a while loop over its steps."""
    lay = layout(prompt, prompt_valid, block_size=block_size, gen_length=gen_length, mask_id=mask_id)
    first, blocks = canvas_blocks(prompt.shape[1], block_size, gen_length)
    kv, passes = None, jnp.int32(0)
    if cache == "exact":
        kv = prefill(graphdef, params, lay, block_size=block_size, first=first)
        passes = jnp.int32(1 if first > 1 else 0)
    decode = functools.partial(_decode_block, graphdef, params, lay, block_size=block_size, gen_length=gen_length,
                               steps_per_block=steps_per_block, cache=cache, mask_id=mask_id,
                               temperature=temperature, remasking=remasking, threshold=threshold, factor=factor)
    finished = functools.partial(_finished, lay=lay, block_size=block_size, gen_length=gen_length, eos_id=eos_id)

    def body(c):
        block, carry, _ = c
        carry = decode(block, carry)
        return block + 1, carry, finished(carry[0], block=block)

    carry = (lay.x, jnp.full(lay.x.shape, -1, jnp.int32), key, passes, kv)
    _, carry, _ = jax.lax.while_loop(lambda c: (c[0] < first + blocks) & ~c[2], body,
                                     (jnp.int32(first), carry, jnp.zeros((), bool)))
    x, trace, _, passes, _ = carry
    return (*_answers(prompt, lay, x, trace, gen_length), passes)


def steps_per_block(gen_length: int, steps: int, block_size: int) -> int:
    """`steps` are for the whole answer, as for the full-sequence sampler: a block of B positions gets
    ceil(steps * B / gen_length) of them, at most B (one reveal each)."""
    return max(1, min(block_size, -(-steps * block_size // gen_length)))


def check_no_guidance(cfg_scale: float) -> None:
    """One ConfigError sentence for guidance asked of a block-diffusion model (its sampler and its ELBO)."""
    from llada_jax.config import ConfigError

    if cfg_scale > 0:
        raise ConfigError("classifier-free guidance is not built for block-diffusion models; use cfg_scale=0")


def check_block_options(gen_length: int, steps: int, block_size: int, cfg_scale: float, cache: str, **rule) -> None:
    """One ConfigError sentence for what block decoding cannot do (`rule`: sampling_rules.check_rule's)."""
    from llada_jax.config import ConfigError

    rules.check_rule(**rule)
    if min(gen_length, steps, block_size) <= 0:
        raise ConfigError(f"gen_length={gen_length}, steps={steps} and block size {block_size} must be positive")
    check_no_guidance(cfg_scale)
    if cache not in BLOCK_CACHES:
        raise ConfigError(f"cache={cache!r} does not apply to a block-diffusion model, which keeps an exact cache "
                          "of finished blocks; use cache=exact (the default) or none (recompute every step)")


def block_decoder(graphdef, *, gen_length: int, steps: int, block_size: int, temperature: float = 0.0,
                  remasking: str = "low_confidence", mask_id: int = 126336, threshold: float | None = None,
                  factor: float | None = None, cache: str = "exact", eos_id: int | None = None,
                  cfg_scale: float = 0.0):
    """(jitted decode(params, prompt, prompt_valid, key) -> (tokens [R, P + G], reveal step, forward passes), its
    static options), after the checks: sampling.decoder's form, for a block-diffusion model."""
    check_block_options(gen_length, steps, block_size, cfg_scale, cache, remasking=remasking,
                        temperature=temperature, threshold=threshold, factor=factor)
    optional = lambda v, kind: None if v is None else kind(v)  # noqa: E731  (hashable static arguments)
    options = dict(gen_length=int(gen_length), steps_per_block=steps_per_block(gen_length, steps, block_size),
                   block_size=int(block_size), temperature=float(temperature), remasking=remasking,
                   mask_id=int(mask_id), threshold=optional(threshold, float), factor=optional(factor, float),
                   cache=cache, eos_id=optional(eos_id, int))
    return functools.partial(_generate_blocks, graphdef, **options), options
