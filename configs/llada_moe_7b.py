"""LLaDA-MoE-7B-A1B (7B, 1.4B active): 16 x 2048, 16 heads of 128 with QK-norm, 64 routed experts of 1024 (top 8,
no shared expert, no dense layer), softmax router whose top-k scores are used as they are, a load-balancing
loss of weight 0.01 and a router z-loss of 0.001; vocabulary 157184, RoPE theta 50000, trained from scratch.

    llada-jax train --config=configs/llada_moe_7b.py --workdir=gs://bucket/llada-moe

Facts from the LLaDA-MoE release (model_type "llada", LLaDAMoEModelLM; dllm's modeling_lladamoe.py). Its RMSNorm
epsilon is not stated in the sources read here; 1e-5 (the released code's default) is used.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.family = "llada_moe"
    c.model.vocab_size = 157184
    c.model.d_model = 2048
    c.model.n_layers = 16
    c.model.n_heads = 16
    c.model.n_kv_heads = 16
    c.model.head_dim = 128
    c.model.mlp_hidden = 8192  # dense_intermediate_size: unused, every layer has experts
    c.model.qk_norm = True
    c.model.rope_theta = 50000.0
    c.model.rms_norm_eps = 1e-5
    c.model.max_seq_len = 8192
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.mask_token_id = 156895
    c.model.eos_token_id = 156892
    c.model.pad_token_id = 156892
    m = c.model.moe
    m.experts = 64
    m.top_k = 8
    m.expert_hidden = 1024
    m.router = "softmax"
    m.load_balance_coef = 0.01
    m.z_loss_coef = 0.001

    c.mesh.expert = 8
    c.train.seq_len = 4096
    c.train.global_batch_size = 1024
    c.train.steps = 100000
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.optimizer.lr = 4e-4
    c.optimizer.warmup_steps = 2000
    c.data.tokenizer = "hf"  # LLaDA-MoE's tokenizer.json: set data.tokenizer_path to its local folder
    return c
