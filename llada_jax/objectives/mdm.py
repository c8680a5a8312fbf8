"""LLaDA pretraining: mask every token at one random ratio per sequence, predict the masked tokens.

The loss is the masked cross entropy / p over each row's real tokens (losses.pretrain_loss), an upper bound
on the negative log-likelihood. Packed rows (first_fit) keep their documents apart through segment ids.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.models import registry as model_lib
from llada_jax.objectives import losses, masking
from llada_jax.objectives.positions import row_lengths, valid_positions


def loss(graphdef, config, params, batch, key):
    """(loss sum, aux with loss_weight) for one (micro-)batch; batch["t"] fixes the noise levels (eval)."""
    t, m = config.train, config.model
    tokens = batch["tokens"]
    key_len, key_mask = jax.random.split(key)
    lengths = row_lengths(batch, key_len, t.random_length_fraction)
    valid, segment_ids = valid_positions(tokens, lengths, batch.get("segment_ids"))
    noisy, masked, p = masking.forward_process(key_mask, tokens, m.mask_token_id, t.mask_eps, valid,
                                               t=batch.get("t"))
    real = jnp.sum(valid, axis=-1)
    # valid is a prefix of each row unless rows are packed documents: only then may attention not use lengths
    packed = "segment_ids" in batch
    outputs = model_lib.apply_head(graphdef, params, noisy, segment_ids=segment_ids,
                                   lengths=None if packed else real, mask_noise=masking.embedding_noise(batch, key))
    total, weight, aux = losses.pretrain_loss(outputs, tokens, masked, p, real)  # per row's real tokens
    return total, {**aux, "loss_weight": weight}
