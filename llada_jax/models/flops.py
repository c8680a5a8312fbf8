"""Parameter and FLOPs accounting: what MFU, preflight and the scaling sweeps count.

Training FLOPs per token = 6 * N + 12 * n_layers * seq_len * (n_heads * head_dim), where N counts the
matmul parameters (every weight except the embedding table, which is a lookup; the untied output head
counts). The second term is attention's QK^T and AV products, forward (4 * T * d_attn per layer) times 3
for forward plus backward. It is the full bidirectional cost: a mask predictor attends to all positions.
It lives beside the models because it depends on the architecture alone (a family with other layers counts
its own).

Mixture of experts: N counts the *active* matmul parameters, what one token goes through: attention, the dense
layers' MLP, and in each MoE layer the router, top_k routed experts and the shared experts (`active`); `total`
holds every expert. MFU and the sweeps' budgets use the active count, as compute is spent on it alone.
"""
from __future__ import annotations

from llada_jax.config import ModelConfig


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by kind; `matmul` is N of the FLOPs formula, the active matmul parameters per token (no norm
    weights, biases or embedding lookup; a tied head is the embedding table used as a matmul, counted there and
    once in `total`); `active_total` is `total` with only the experts a token uses."""
    d, f, hd = cfg.d_model, cfg.mlp_hidden, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, out; k, v
    mlp = 3 * d * f
    vectors = 2 * d + (cfg.n_heads + 2 * cfg.n_kv_heads) * hd * cfg.qkv_bias + 2 * hd * cfg.qk_norm
    moe = _moe_layer_counts(cfg)
    dense_layers = cfg.n_layers - cfg.moe_layers
    per_layer = attn + mlp + vectors
    embedding = cfg.vocab_size * d
    head = d * cfg.vocab_size
    layers = dense_layers * per_layer + cfg.moe_layers * (attn + vectors + moe["all"])
    active_layers = dense_layers * (attn + mlp) + cfg.moe_layers * (attn + moe["active"])
    non_embedding = layers + d + head
    total = non_embedding + embedding - (head if cfg.tie_embeddings else 0)
    active_total = total - cfg.moe_layers * (moe["all"] - moe["active"] - moe["vectors"])
    return {"total": total, "non_embedding": non_embedding, "embedding": embedding, "per_layer": per_layer,
            "matmul": active_layers + head, "active_total": active_total}


def _moe_layer_counts(cfg: ModelConfig) -> dict[str, int]:
    """One MoE layer's feed-forward params: all of them, the active matmul ones, and the bias vector."""
    if not cfg.is_moe:
        return {"all": 0, "active": 0, "vectors": 0}
    moe, d = cfg.moe, cfg.d_model
    expert, shared, router = 3 * d * moe.expert_hidden, 3 * d * moe.expert_hidden * moe.shared_experts, d * moe.experts
    vectors = moe.experts * moe.expert_bias
    return {"all": moe.experts * expert + shared + router + vectors, "active": moe.top_k * expert + shared + router,
            "vectors": vectors}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward); see the module docstring for the formula."""
    matmul_params = param_counts(cfg)["matmul"]
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
