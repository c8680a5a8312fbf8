"""LLaDA 1B: 22 x 2048, 32 heads of 64, SwiGLU 5634 (~1.5B params with the 126464 vocabulary), paper recipe."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import llada_8b  # noqa: E402


def get_config():
    c = llada_8b.get_config()
    c.model.d_model = 2048
    c.model.n_layers = 22
    c.model.n_heads = 32
    c.model.n_kv_heads = 32
    c.model.mlp_hidden = 5634
    # Recompute each layer in the backward pass: keeping its activations costs ~3.6 GiB per layer per 16k
    # tokens (CPU preflight), so long sequences at useful batch sizes need it (v5p: 16 x 4096 per chip).
    c.model.remat = "full"
    return c
