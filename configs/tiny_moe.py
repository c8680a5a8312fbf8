"""CPU mixture of experts: configs/tiny.py's data and schedule with LLaDA2.0's layer recipe at toy size.

    llada-jax train --config=configs/tiny_moe.py --workdir=runs/moe

4 layers of 128 (the first dense), 8 routed experts of 128 (top 2) plus one shared expert, GQA with QK-norm and
half-width RoPE, LLaDA2.0's router (sigmoid scores, an expert bias balanced by load, 4 groups of which a token
uses 2, renormalised weights scaled by 2.5). The tests train it on the CPU.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny  # noqa: E402


def get_config():
    c = tiny.get_config()
    c.model.family = "llada2_moe"
    c.model.d_model = 128
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.n_kv_heads = 2
    c.model.mlp_hidden = 352  # the dense first layer
    c.model.qk_norm = True
    c.model.rotary_dim = 16  # of head_dim 32
    c.model.rms_norm_eps = 1e-6
    m = c.model.moe
    m.experts = 8
    m.top_k = 2
    m.expert_hidden = 128
    m.shared_experts = 1
    m.first_dense_layers = 1
    m.router = "sigmoid"
    m.norm_topk = True
    m.routed_scaling = 2.5
    m.n_groups = 4
    m.topk_groups = 2
    m.expert_bias = True
    m.bias_update_rate = 1e-3
    return c
