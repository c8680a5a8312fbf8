"""Parameter and FLOPs accounting: what MFU, preflight and the scaling sweeps count.

Training FLOPs per token = 6 * N + 12 * n_layers * seq_len * (n_heads * head_dim), where N counts the
matmul parameters (every weight except the embedding table, which is a lookup; the untied output head
counts). The second term is attention's QK^T and AV products, forward (4 * T * d_attn per layer) times 3
for forward plus backward. It is the full bidirectional cost: a mask predictor attends to all positions.
It lives beside the models because it depends on the architecture alone (a family with other layers counts
its own).
"""
from __future__ import annotations

from llada_jax.config import ModelConfig


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by kind; `matmul` is N of the FLOPs formula (no norm weights, biases or embedding lookup; a
    tied head is the embedding table used as a matmul, counted there and once in `total`)."""
    d, f, hd = cfg.d_model, cfg.mlp_hidden, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, out; k, v
    mlp = 3 * d * f
    vectors = 2 * d + (cfg.n_heads + 2 * cfg.n_kv_heads) * hd * cfg.qkv_bias + 2 * hd * cfg.qk_norm
    per_layer = attn + mlp + vectors
    embedding = cfg.vocab_size * d
    head = d * cfg.vocab_size
    non_embedding = cfg.n_layers * per_layer + d + head
    total = non_embedding + embedding - (head if cfg.tie_embeddings else 0)
    return {"total": total, "non_embedding": non_embedding, "embedding": embedding, "per_layer": per_layer,
            "matmul": cfg.n_layers * (attn + mlp) + head}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward); see the module docstring for the formula."""
    matmul_params = param_counts(cfg)["matmul"]
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
