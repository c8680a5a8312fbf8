"""The objective registry: `train.objective` picks how a batch is noised and scored.

The train and eval steps call `compute_loss` only; an objective is one entry here (its loss function, the
batch fields it needs beyond tokens, and how its loss and accuracy are named), never a flag tested elsewhere.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.models import flops, router_stats
from llada_jax.objectives import ar, block_diffusion, mdm, router_losses, sft


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: Callable  # (graphdef, config, params, batch, key) -> (loss sum, aux with "loss_weight")
    batch_fields: dict = dataclasses.field(default_factory=dict)  # name -> dtype, besides "tokens" [B, T] int32
    loss_label: str = "loss"  # the progress line's name for the loss
    loss_meaning: str = "ELBO bound"  # what the reported nats/token are
    accuracy_label: str = "masked"  # the progress line's name for whose accuracy it is
    accuracy_meaning: str = "masked-token"  # the same in the closing line
    masks_inputs: bool = True  # its inputs hold mask tokens (train.mask_embedding_noise has something to noise)
    # (train config, 0-based step) -> the block size that step trains with, for objectives that train in blocks; a
    # step per distinct value is compiled (training/trainer.py); eval uses the size the run ends at
    block_size_at: Callable | None = None
    block_sizes: Callable | None = None  # train config -> the distinct block sizes of a run, in order of first use
    # (model config, seq_len, block_size) -> training FLOPs per token of the row (scaling sweeps and MFU)
    flops_per_token: Callable = lambda cfg, seq_len, block_size: flops.flops_per_token(cfg, seq_len)  # noqa: E731


# train.objective -> Objective (config.OBJECTIVES lists the same names)
OBJECTIVES = {
    "mdm": Objective(mdm.loss),
    "sft": Objective(sft.loss, batch_fields=sft.BATCH_FIELDS),
    "ar": Objective(ar.loss, loss_label="NLL", loss_meaning="NLL", accuracy_label="next-token",
                    accuracy_meaning="next-token", masks_inputs=False),
    "block_diffusion": Objective(block_diffusion.loss, loss_meaning="block-diffusion bound",
                                 block_size_at=block_diffusion.block_size_at, block_sizes=block_diffusion.block_sizes,
                                 flops_per_token=block_diffusion.flops_per_token),
}


def get(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"train.objective={name!r} is unknown; use one of {tuple(OBJECTIVES)}") from None


def compute_loss(graphdef, config, params, batch, key):
    """(loss sum, aux) for one (micro-)batch; aux["loss_weight"] is what the sum is divided by (summed over
    micro-batches first), the other aux entries are metric sums. A mixture-of-experts model's router statistics,
    reported by every forward pass the objective makes, add the router losses and metrics (router_losses.py)."""
    with router_stats.collecting() as reports:
        total, aux = get(config.train.objective).loss(graphdef, config, params, batch, key)
    return router_losses.add_router_terms(total, aux, router_stats.total(reports),
                                          ModelConfig.from_config(config.model))
