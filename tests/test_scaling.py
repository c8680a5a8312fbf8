"""Parameter and FLOPs accounting against the built model and a hand computation."""
import math

import jax

from llada_jax.models import registry as M
from llada_jax.models import flops
from llada_jax.utils import chips
from llada_jax.config import ModelConfig


def test_param_counts_match_the_built_model_with_gqa():
    cfg = ModelConfig(vocab_size=100, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=8, mlp_hidden=80)
    _, abstract, _ = M.split_model(M.abstract_model(cfg))
    built = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    counts = flops.param_counts(cfg)
    assert counts["total"] == built
    assert counts["embedding"] == 100 * 48 and counts["non_embedding"] == built - 100 * 48


def test_llada_8b_has_8b_params():
    cfg = ModelConfig(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                      mlp_hidden=12288)
    assert abs(flops.param_counts(cfg)["total"] / 1e9 - 8.02) < 0.01  # the paper's 8.02B


def test_flops_per_token_hand_computed():
    cfg = ModelConfig(vocab_size=10, d_model=4, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=2, mlp_hidden=6)
    # per layer: q,k,v,o = 4 * 4*4 = 64; mlp = 3 * 4*6 = 72; head 4*10 = 40 -> N = 2*136 + 40 = 312
    assert flops.flops_per_token(cfg, seq_len=8) == 6 * 312 + 12 * 2 * 8 * 4


def test_peak_lookup():
    assert chips.peak_tflops("TPU v5p") == 459.0 and chips.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert chips.peak_tflops("TPU v5 lite") == 197.0 and chips.peak_tflops("cpu") is None


def test_block_diffusion_flops_per_token_hand_computed():
    from llada_jax.objectives import block_diffusion
    from llada_jax.objectives import registry as objectives

    cfg = ModelConfig(vocab_size=10, d_model=4, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=2, mlp_hidden=6)
    # layers N = 2 * 136 = 272 over both streams, head 40 over the noisy one; L = 8, blocks of 2: pairs allowed =
    # noisy-noisy 4 * 2 * 2 + noisy-clean 4 * (0 + 2 + 4 + 6) + clean-clean 2 * (2 + 4 + 6 + 8) = 16 + 24 + 40 = 80
    want = 6 * (2 * 272 + 40) + 12 * 2 * (80 / 8) * 4
    assert block_diffusion.flops_per_token(cfg, 8, 2) == want
    assert objectives.get("block_diffusion").flops_per_token(cfg, 8, 2) == want
    # one block (block >= seq_len) is LLaDA's count; the other objectives ignore the block size
    assert block_diffusion.flops_per_token(cfg, 8, 8) == flops.flops_per_token(cfg, 8)
    assert objectives.get("mdm").flops_per_token(cfg, 8, 2) == flops.flops_per_token(cfg, 8)
