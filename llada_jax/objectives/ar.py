"""The autoregressive baseline of the scaling sweeps: next-token NLL of a causal model, same data and crop."""
from __future__ import annotations

import jax

from llada_jax.models import registry as model_lib
from llada_jax.objectives import losses
from llada_jax.objectives.positions import row_lengths, valid_positions


def loss(graphdef, config, params, batch, key):
    """(NLL sum over predicted positions, aux with loss_weight = their count)."""
    tokens = batch["tokens"]
    key_len, _ = jax.random.split(key)
    lengths = row_lengths(batch, key_len, config.train.random_length_fraction)
    valid, segment_ids = valid_positions(tokens, lengths, batch.get("segment_ids"))
    outputs = model_lib.apply_head(graphdef, params, tokens, segment_ids=segment_ids)
    total, weight, aux = losses.ar_loss(outputs, tokens, valid)
    return total, {**aux, "loss_weight": weight}
