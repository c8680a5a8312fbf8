"""Block diffusion (BD3-LM, LLaDA2): each block of a row is denoised given the clean blocks before it.

The row is cut into blocks, b(i) = i // block_size. Each block gets its own noise level (or the row one), and the
model reads the noisy row x_t and the clean row x_0 side by side (2L columns, positions 0..L-1 in both), with the
attention of models/block_mask.py: noisy columns see their own noisy block and the clean blocks before it, clean
columns see clean blocks up to their own, documents (segment ids) never see each other. Only the noisy half gets
the output head, and the loss is the cross entropy on its masked tokens (losses.block_loss: CE / p as LLaDA, or a
plain mean). A block as long as the row has nothing before it, so the clean stream is skipped and the loss is
LLaDA's, computed by the same code as mdm.py / sft.py; a block of one token predicts each masked token from the
tokens before it, as next-token prediction does.

The batch decides pretraining or SFT: rows with a "prompt_mask" (data.source=sft_jsonl) keep the prompt clean in
both streams and noise only the response (and its EOS padding), normalised by the response length; plain
documents get LLaDA's random-length crop and, packed with first_fit, their segment ids. With
train.complementary_masks every row also appears with the complementary mask, so each maskable token is
supervised exactly once per step.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from llada_jax.config import parse_block_schedule
from llada_jax.models import logit_shift, registry as model_lib
from llada_jax.models.block_mask import BlockPattern
from llada_jax.models.flops import param_counts
from llada_jax.objectives import losses, masking
from llada_jax.objectives.positions import row_lengths, valid_positions
from llada_jax.objectives.sft import widened_segments


@dataclasses.dataclass(frozen=True)
class Settings:
    """The train.* fields block diffusion reads (configs saved before they existed get the defaults)."""

    block_size: int = 32
    per_block: bool = True
    weighting: str = "elbo"
    noise_range: tuple = (0.0, 1.0)
    complementary: bool = False

    @classmethod
    def from_train(cls, t) -> "Settings":
        return cls(block_size=int(t.get("block_size", 32)), per_block=t.get("block_noise", "block") == "block",
                   weighting=t.get("block_weighting", "elbo"),
                   noise_range=(float(t.get("noise_low", 0.0)), float(t.get("noise_high", 1.0))),
                   complementary=bool(t.get("complementary_masks", False)))


def effective_block_size(block_size: int, seq_len: int) -> int:
    """Sizes of at least the row length are all one block (LLaDA's objective), so they share a compiled step."""
    return min(block_size, seq_len)


@functools.lru_cache(maxsize=64)
def _phases(schedule: str, steps: int) -> tuple:
    """((first step, size), ...) of a schedule: phase k covers round(sum of fractions before it * steps) onward."""
    starts, end = [], 0.0
    for size, share in parse_block_schedule(schedule):
        starts.append((round(end * steps), size))
        end += share
    return tuple(starts)


def block_size_at(t, step: int) -> int:
    """The (effective) block size step `step` (0-based) trains with: the train.block_schedule phase holding it,
    else train.block_size."""
    size = int(t.get("block_size", 32))
    for start, phase_size in _phases(t.get("block_schedule", ""), int(t.steps)):
        if step >= start:
            size = phase_size
    return effective_block_size(size, int(t.seq_len))


def block_sizes(t) -> list[int]:
    """The distinct effective block sizes a run trains with, in order of first use (one compiled step each)."""
    phases = _phases(t.get("block_schedule", ""), int(t.steps))
    sizes = [block_size_at(t, start) for start, _ in phases if start < t.steps] or [block_size_at(t, 0)]
    return list(dict.fromkeys(sizes))


def rows_of(batch, key, crop_fraction: float):
    """(tokens, segment ids for attention, maskable [B, T], normaliser [B], lengths for a one-block pass or None).

    SFT rows (with a prompt_mask) are widened to the micro-batch's longest example and keep the prompt clean;
    documents get the random-length crop and keep their packing segments."""
    tokens = batch["tokens"]
    if "prompt_mask" in batch:
        segment_ids = batch.get("segment_ids")
        segment_ids = widened_segments(segment_ids) if segment_ids is not None else None
        valid, segment_ids = valid_positions(tokens, row_lengths(batch, key, 0.0), segment_ids)
        maskable = valid & ~batch["prompt_mask"]
        return tokens, segment_ids, maskable, jnp.sum(maskable, axis=-1), jnp.sum(valid, axis=-1)
    lengths = row_lengths(batch, key, crop_fraction)
    valid, segment_ids = valid_positions(tokens, lengths, batch.get("segment_ids"))
    real = jnp.sum(valid, axis=-1)
    return tokens, segment_ids, valid, real, None if "segment_ids" in batch else real


def complementary_rows(tokens, segment_ids, maskable, normaliser, noisy, masked, p, mask_id: int, eps: float):
    """Every row twice: as drawn, and with the maskable tokens it left clean masked (probability 1 - p)."""
    masked_c = maskable & ~masked
    noisy_c = jnp.where(masked_c, mask_id, tokens)
    twice = lambda a, b: jnp.concatenate([a, b], axis=0)  # noqa: E731
    p_c = jnp.maximum(1.0 - p, eps)
    return (twice(tokens, tokens), twice(segment_ids, segment_ids), twice(normaliser, normaliser),
            twice(noisy, noisy_c), twice(masked, masked_c), twice(p, p_c))


def two_stream_head(graphdef, params, noisy, clean, segment_ids, block_size: int, shift: bool = False,
                    mask_noise=None):
    """The model over [x_t | x_0] with the block-diffusion attention; the head's output for the noisy half only
    (with `shift`, the states that predict each noisy position: logit_shift.py). `mask_noise`: the model's
    mask-embedding noise (only the noisy half holds mask tokens)."""
    b, length = noisy.shape
    positions = jnp.broadcast_to(jnp.tile(jnp.arange(length), 2), (b, 2 * length))
    both = jnp.concatenate([noisy, clean], axis=1)
    segments = jnp.concatenate([segment_ids, segment_ids], axis=1)
    outputs = model_lib.apply_head(graphdef, params, both, positions, segments,
                                   attention_pattern=BlockPattern(block_size, length), mask_noise=mask_noise)
    hidden = outputs.hidden[:, :length]
    if shift:
        hidden = logit_shift.shifted_hidden(hidden, outputs.hidden[:, length:], block_size)
    return dataclasses.replace(outputs, hidden=hidden)


def loss(graphdef, config, params, batch, key):
    """(loss sum, aux with loss_weight) for one (micro-)batch; batch["t"] [B] fixes the noise levels (eval)."""
    t, m = config.train, config.model
    s = Settings.from_train(t)
    key_len, key_mask = jax.random.split(key)
    tokens, segment_ids, maskable, normaliser, lengths = rows_of(batch, key_len, t.random_length_fraction)
    size = effective_block_size(s.block_size, tokens.shape[1])
    noisy, masked, p = masking.block_forward_process(key_mask, tokens, m.mask_token_id, t.mask_eps, size,
                                                     maskable, t=batch.get("t"), per_block=s.per_block,
                                                     noise_range=s.noise_range)
    if s.complementary:
        tokens, segment_ids, normaliser, noisy, masked, p = complementary_rows(
            tokens, segment_ids, maskable, normaliser, noisy, masked, p, m.mask_token_id, t.mask_eps)
        lengths = None if lengths is None else jnp.concatenate([lengths, lengths])
    mask_noise = masking.embedding_noise(batch, key, rows=tokens.shape[0])
    if size >= tokens.shape[1]:  # one block: nothing before it to see, LLaDA's objective on one stream
        outputs = model_lib.apply_head(graphdef, params, noisy, segment_ids=segment_ids, lengths=lengths,
                                       mask_noise=mask_noise)
        if m.logit_shift:
            outputs = dataclasses.replace(outputs, hidden=logit_shift.shifted_hidden(outputs.hidden, None, size))
    else:
        outputs = two_stream_head(graphdef, params, noisy, tokens, segment_ids, size, shift=m.logit_shift,
                                  mask_noise=mask_noise)
    if m.logit_shift:  # a position with no predecessor in its document has nothing to be predicted from
        masked = masked & logit_shift.predictable(segment_ids)
    total, weight, aux = losses.block_loss(outputs, tokens, masked, p, normaliser, s.weighting)
    return total, {**aux, "loss_weight": weight}


def flops_per_token(cfg, seq_len: int, block_size: int) -> float:
    """Training FLOPs per token of the row: the layers run over both streams (2 x 6 N_layers), the head over the
    noisy one (6 N_head), and attention over the query-key pairs the mask allows (block_mask.allowed_pairs: about
    L^2 + L * block of the (2L)^2) at 12 * layers * d_attn per pair per row token. One block is LLaDA's count."""
    counts = param_counts(cfg)
    head = cfg.d_model * cfg.vocab_size
    layers = counts["matmul"] - head
    size = effective_block_size(block_size, seq_len)
    if size >= seq_len:
        pairs_per_token = seq_len
        streams = 1
    else:
        pairs_per_token = BlockPattern(size, seq_len).allowed_pairs(2 * seq_len) / seq_len
        streams = 2
    return 6.0 * (streams * layers + head) + 12.0 * cfg.n_layers * pairs_per_token * cfg.n_heads * cfg.head_dim
