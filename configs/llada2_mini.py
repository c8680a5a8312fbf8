"""LLaDA2.0-mini (16B, 1.4B active): 20 x 2048, 16 query / 4 KV heads of 128 with QK-norm and RoPE on 64 of
128 dimensions (theta 600000), the first layer dense (SwiGLU 5120), then 256 routed experts of 512 (top 8) and
one shared expert; sigmoid router with an expert bias balanced by load, 8 groups of which a token uses 4,
renormalised weights times 2.5; vocabulary 157184. Shapes from inclusionAI/dFactory's
configs/model_configs/llada2_mini/config.json.

    llada-jax preflight --config=configs/llada2_mini.py --topology=v5p:4x4x2 --config.train.global_batch_size=128

Experts split 8 ways over the `expert` mesh axis (fsdp takes the remaining chips); each layer is recomputed in
the backward pass. The schedule is a placeholder continued-pretraining run (LLaDA2.0 starts from Ling-2.0).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.family = "llada2_moe"
    c.model.vocab_size = 157184
    c.model.d_model = 2048
    c.model.n_layers = 20
    c.model.n_heads = 16
    c.model.n_kv_heads = 4
    c.model.head_dim = 128
    c.model.mlp_hidden = 5120
    c.model.qk_norm = True
    c.model.rotary_dim = 64
    c.model.rope_theta = 600000.0
    c.model.rms_norm_eps = 1e-6
    c.model.max_seq_len = 16384
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.mask_token_id = 156895
    c.model.eos_token_id = 156892
    c.model.pad_token_id = 156892
    set_llada2_router(c.model.moe, experts=256, top_k=8, expert_hidden=512)

    c.mesh.expert = 8
    c.train.seq_len = 4096
    c.train.global_batch_size = 512
    c.train.steps = 100000
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 2000
    c.data.tokenizer = "hf"  # LLaDA2.0's tokenizer.json: set data.tokenizer_path to its local folder
    return c


def set_llada2_router(moe, *, experts: int, top_k: int, expert_hidden: int) -> None:
    """LLaDA2.0's mixture of experts (both sizes): one shared expert, the first layer dense, sigmoid scores with
    aux-loss-free balancing, group-limited top-k (8 groups, 4 used), renormalised weights times 2.5, dropless."""
    moe.experts = experts
    moe.top_k = top_k
    moe.expert_hidden = expert_hidden
    moe.shared_experts = 1
    moe.first_dense_layers = 1
    moe.router = "sigmoid"
    moe.norm_topk = True
    moe.routed_scaling = 2.5
    moe.n_groups = 8
    moe.topk_groups = 4
    moe.expert_bias = True
    moe.bias_update_rate = 1e-3
