"""LLaDA2.0-flash (100B, 6.1B active): 32 x 4096, 32 query / 4 KV heads of 128, the first layer dense (SwiGLU
9216), 256 routed experts of 1024 (top 8) and one shared expert; otherwise LLaDA2.0-mini's recipe
(configs/llada2_mini.py). Shapes from inclusionAI/dFactory's configs/model_configs/llada2_flash/config.json.

    llada-jax preflight --config=configs/llada2_flash.py --topology=v5p:8x8x4 --config.train.global_batch_size=512
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import llada2_mini  # noqa: E402


def get_config():
    c = llada2_mini.get_config()
    c.model.d_model = 4096
    c.model.n_layers = 32
    c.model.n_heads = 32
    c.model.n_kv_heads = 4
    c.model.mlp_hidden = 9216
    llada2_mini.set_llada2_router(c.model.moe, experts=256, top_k=8, expert_hidden=1024)
    c.mesh.expert = 16
    c.train.global_batch_size = 1024
    return c
