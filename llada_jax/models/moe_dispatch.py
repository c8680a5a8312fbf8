"""Dispatch of a mixture-of-experts layer: tokens to their experts and back, computing only the chosen experts.

On each device (inside shard_map when a mesh is set): route the device's tokens (moe_routing.py), sort the
(token, expert) assignments by expert, run each expert's SwiGLU on its rows with grouped matmuls
(grouped_matmul.py), and add each row's output, times its routing weight, back onto its token. Nothing of
shape [tokens, experts, ...] is ever formed.

Expert parallelism (mesh axis `expert` > 1): each device holds experts/expert of the experts; the sorted rows
travel to the device owning their expert and back with one all_to_all each way over the `expert` axis. Shapes
are static, so each device reserves a slot per destination: dropless (capacity_factor 0), a slot holds every
row the device could send there (tokens x min(top_k, local experts)); with a capacity the slot holds that many
per expert. Expert weights arrive whole on the dimension FSDP splits (shard_map gathers them, as FSDP does);
with tensor parallelism each device computes its slice of the expert hidden size and the partial outputs are
summed over `tensor` once per token.

Capacity (model.moe.capacity_factor c > 0): each expert takes at most ceil(c * tokens * top_k / experts)
assignments from one device's tokens, earliest tokens first; the others are dropped (the token keeps only its
other experts and the shared expert) and counted.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from llada_jax import sharding
from llada_jax.config import MoEConfig
from llada_jax.models.grouped_matmul import grouped_matmul
from llada_jax.models.moe_routing import expert_counts, route, routing_stats


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this layer runs: the expert-parallel degree, the mesh axes to sum statistics and partial outputs
    over, and the grouped matmul kernel."""
    kernel: str
    expert_shards: int = 1
    expert_axis: str | None = None
    batch_axes: tuple = ()
    tensor_axes: tuple = ()


def expert_swiglu(rows, group_sizes, w_gate, w_up, w_down, place: Placement):
    """Each row through its expert's SwiGLU: rows [R, d] sorted by expert, weights [G, d, f] / [G, f, d]."""
    mm = lambda a, w: grouped_matmul(a, w, group_sizes, place.kernel)  # noqa: E731
    gate = checkpoint_name(mm(rows, w_gate), "expert_gate")
    up = checkpoint_name(mm(rows, w_up), "expert_up")
    return checkpoint_name(mm(jax.nn.silu(gate) * up, w_down), "expert_output")


def capacity(moe: MoEConfig, tokens: int) -> int | None:
    """Assignments one expert accepts from one device's `tokens` tokens; None when dropless."""
    if moe.capacity_factor <= 0:
        return None
    return max(1, math.ceil(moe.capacity_factor * tokens * moe.top_k / moe.experts))


def sorted_assignments(experts: jax.Array, n_experts: int, cap: int | None):
    """(order [N*K]: assignment indices sorted by expert, kept [N*K] in that order, group sizes [E] of the kept).

    Dropped assignments (past the capacity, or padding tokens with expert id E) sort after the kept ones, so the
    kept rows of each expert are consecutive from the start."""
    flat = experts.reshape(-1)
    counts = expert_counts(experts, n_experts)
    order = jnp.argsort(flat, stable=True)
    by_expert = flat[order]
    safe = jnp.minimum(by_expert, n_experts - 1)
    rank = jnp.arange(flat.shape[0]) - (jnp.cumsum(counts) - counts)[safe]
    kept = (by_expert < n_experts) & (True if cap is None else rank < cap)
    key = jnp.where(kept, by_expert, n_experts)  # dropped ones after every expert's kept rows
    resort = jnp.argsort(key, stable=True)
    sizes = counts if cap is None else jnp.minimum(counts, cap)
    return order[resort], kept[resort], sizes.astype(jnp.int32)


def local_moe(x, router_w, bias, w_gate, w_up, w_down, valid, moe: MoEConfig, place: Placement):
    """One device's part of the layer: x [b, T, d] -> (routed experts' output [b, T, d], statistics)."""
    b, t, d = x.shape
    n, k = b * t, moe.top_k
    flat = x.reshape(n, d)
    routing = route(flat, router_w, bias, moe, valid.reshape(n))
    stats = routing_stats(routing, b, valid)
    order, kept, sizes = sorted_assignments(routing.experts, moe.experts, capacity(moe, n))
    token = order // k
    rows = jnp.where(kept[:, None], flat[token], 0)
    if place.expert_shards > 1:
        out_rows = exchange_and_compute(rows, routing.experts.reshape(-1)[order], kept, sizes, w_gate, w_up,
                                        w_down, moe, place)
    else:
        out_rows = expert_swiglu(rows, sizes, w_gate, w_up, w_down, place)
    weight = jnp.where(kept, routing.weights.reshape(-1)[order], 0.0)
    out = jnp.zeros((n, d), jnp.float32).at[token].add(out_rows.astype(jnp.float32) * weight[:, None])
    if place.tensor_axes:
        out = jax.lax.psum(out, place.tensor_axes)
    stats["dropped"] = jnp.sum(routing.experts < moe.experts) - jnp.sum(kept)
    if place.batch_axes:
        stats = jax.lax.psum(stats, place.batch_axes)
    return out.reshape(b, t, d).astype(x.dtype), stats


def exchange_and_compute(rows, experts, kept, sizes, w_gate, w_up, w_down, moe: MoEConfig, place: Placement):
    """Expert parallelism: rows [R, d] (sorted by expert, kept ones first) to the devices owning their experts,
    through the local experts there, and back; returns the outputs in the same order as `rows`."""
    ep, local = place.expert_shards, moe.experts // place.expert_shards
    r, d = rows.shape
    cap = capacity(moe, r // moe.top_k)
    slot = local * cap if cap else (r // moe.top_k) * min(moe.top_k, local)
    dest = jnp.minimum(experts, moe.experts - 1) // local
    per_dest = jnp.zeros((ep,), jnp.int32).at[dest].add(kept.astype(jnp.int32))
    pos = jnp.arange(r) - (jnp.cumsum(per_dest) - per_dest)[dest]  # kept rows are sorted by expert, so by dest
    where = jnp.where(kept, dest * slot + pos, ep * slot)
    send = jnp.zeros((ep * slot, d), rows.dtype).at[where].set(rows, mode="drop")
    send_ids = jnp.full((ep * slot,), local, jnp.int32).at[where].set(experts % local, mode="drop")
    a2a = lambda a: jax.lax.all_to_all(a.reshape((ep, slot) + a.shape[1:]), place.expert_axis, 0, 0)  # noqa: E731
    recv, recv_ids = a2a(send).reshape(ep * slot, d), a2a(send_ids).reshape(ep * slot)
    order = jnp.argsort(recv_ids, stable=True)  # by local expert; empty slots (id `local`) last
    recv_sizes = expert_counts(recv_ids, local).astype(jnp.int32)
    out = expert_swiglu(recv[order], recv_sizes, w_gate, w_up, w_down, place)
    back = a2a(jnp.zeros_like(out).at[order].set(out)).reshape(ep * slot, d)
    return back.at[where].get(mode="fill", fill_value=0)


def placement(moe: MoEConfig, kernel: str, x_shape, w_shape, mesh) -> tuple[Placement, tuple]:
    """(Placement, shard_map in_specs of x, router, bias, gate/up, down, valid) for the current mesh."""
    x_spec = sharding.logical_to_spec(("batch", "length", "act_embed"), x_shape, mesh)
    w_spec = sharding.logical_to_spec(("experts", "embed", "mlp"), w_shape, mesh)
    axes = lambda part: () if part is None else ((part,) if isinstance(part, str) else tuple(part))  # noqa: E731
    expert_axes, tensor_axes = axes(w_spec[0]), axes(w_spec[2])
    gate_spec = P(w_spec[0], None, w_spec[2])  # the embed dimension arrives whole (gathered like FSDP)
    down_spec = P(w_spec[0], w_spec[2], None)
    ep = math.prod(mesh.shape[a] for a in expert_axes)
    place = Placement(kernel, ep, expert_axes[0] if expert_axes else None, axes(x_spec[0]), tensor_axes)
    return place, (x_spec, P(), P(), gate_spec, gate_spec, down_spec, P(x_spec[0], x_spec[1]))


def moe_layer(x, router_w, bias, w_gate, w_up, w_down, valid, moe: MoEConfig, kernel: str):
    """The routed experts of one layer over the whole batch: x [B, T, d] -> ([B, T, d], summed statistics).
    `bias` is the expert bias [E] or None; `valid` [B, T] marks real tokens (padding is routed nowhere)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return local_moe(x, router_w, bias, w_gate, w_up, w_down, valid, moe, Placement(kernel))
    place, specs = placement(moe, kernel, x.shape, w_gate.shape, mesh)
    x_spec, router_spec, bias_spec, gate_spec, up_spec, down_spec, valid_spec = specs
    if bias is None:
        body = lambda x_, r_, g_, u_, d_, v_: local_moe(x_, r_, None, g_, u_, d_, v_, moe, place)  # noqa: E731
        args, in_specs = (x, router_w, w_gate, w_up, w_down, valid), (x_spec, router_spec, gate_spec, up_spec,
                                                                      down_spec, valid_spec)
    else:
        body = lambda *a: local_moe(*a, moe, place)  # noqa: E731
        args, in_specs = (x, router_w, bias, w_gate, w_up, w_down, valid), specs
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(x_spec, P()), check_vma=False)
    return fn(*args)
