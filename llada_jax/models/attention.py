"""Attention kernels by backend, behind one function: training, sampling and scoring all call `attention`.

Dense attention materialises [batch, heads, q_len, kv_len] scores (and their float32 softmax for the backward
pass), which dominates memory at long sequences. So:

- "cudnn"     (GPU): the cuDNN flash kernel of jax.nn.dot_product_attention; with `kv_lengths` (rows that are
              a valid prefix plus padding) it gets sequence lengths instead of a dense mask, which lets cuDNN
              pick its large-tile kernels.
- "splash"    (TPU): the Pallas splash-attention kernel with segment ids, run per shard under shard_map.
- "blockwise" (anywhere): pure JAX online softmax over key blocks with a hand-written backward pass that
              recomputes each block, so neither direction keeps more than [batch, heads, q_len, block] scores.
- "xla"       the dense reference (jax.nn.dot_product_attention with a boolean mask); tests compare to it.

"auto" picks cudnn on GPU, splash on TPU and, elsewhere, xla when the keys fit in one block (blockwise would
hold the same scores, only slower: 2-5x on a CPU at 96 tokens) and blockwise beyond. A kernel that cannot take
the inputs (cuDNN with float32, a head_dim it lacks; splash with a cached prefix or a length that is not a
multiple of 128) falls back to blockwise; `unmet_requirement` is the one table of those constraints, and
`startup_kernel` says at start-up which kernel runs when it is not the one asked for.

Masking rule everywhere: query i sees key j iff their segment ids are equal (and j <= i + kv_len - q_len when
causal). Segment 0 is padding; padding rows attend among themselves, so no row is ever empty.

Block diffusion restricts attention further by one rule, block_mask.may_attend (a noisy block sees its own noisy
block and the clean blocks before it, a clean block the clean blocks up to itself), given to the kernels in one
of two forms, each used where the other cannot serve:
- `pattern` (block_mask.BlockPattern: static and hashable, part of what jit compiles) is training's two-stream
  layout, noisy and clean copies of a row side by side in 2L columns. Known at trace time, it lets the kernels
  skip work: splash evaluates it as a computable mask and skips empty tiles, and blockwise becomes
  tiled_attention.py's kernel, which visits only the active tiles (xla and cudnn apply it as a dense mask). It
  is a function of column indices, with the queries the last T of the S columns.
- visibility ranks ride in the segment ids: queries as a pair (ids, rank) and keys as a triple (ids, from, to),
  int [B, T] / [B, S]; query i then also needs from[j] <= rank[i] <= to[j] (block_mask.visibility_ranks turns a
  column's stream and block into these numbers). They serve decoding and scoring (inference/block_sampling.py,
  block_likelihood.py), whose passes are windows at a traced column of a KV cache: a static column pattern
  cannot place them, arrays can. Being data, they let no kernel skip tiles: the xla and blockwise kernels take
  them (cuDNN through its dense-mask path); splash runs blockwise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llada_jax.models import block_mask, tiled_attention

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "blockwise")
_NEG = -1e30  # finite "minus infinity": exp(_NEG - m) underflows to 0 without inf - inf = nan


def target_platform() -> str:
    """The platform being compiled for: the mesh context's devices (a TPU topology during ahead-of-time
    compiles from a CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


CUDNN_DTYPES = ("bfloat16", "float16")  # jax.nn.dot_product_attention's cuDNN path refuses float32 ("Q must be fp16/bf16")
CUDNN_MAX_HEAD_DIM = 128


def unmet_requirement(kernel: str, *, q_len: int, kv_len: int, head_dim: int, dtype, platform: str) -> str | None:
    """Why `kernel` cannot run these inputs on `platform` (None when it can): the one table of what each kernel
    constrains. xla and blockwise run anything; splash runs off TPU too, in Pallas interpret mode."""
    dtype = jnp.dtype(dtype).name
    if kernel == "cudnn":
        if platform != "gpu":
            return f"the cuDNN kernel runs on GPUs only, not on {platform}"
        if dtype not in CUDNN_DTYPES:
            return f"the cuDNN kernel takes bfloat16 or float16 inputs, not {dtype} (model.dtype)"
        if head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8:
            return f"the cuDNN kernel needs a head_dim that is a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, not {head_dim}"
    if kernel == "splash":
        if q_len != kv_len:
            return "the splash kernel needs queries and keys of one length (no cached prefix)"
        if q_len % 128:
            return f"the splash kernel tiles by 128 positions and {q_len} is not a multiple of 128"
    return None


def candidates(implementation: str, platform: str, kv_len: int, block_size: int) -> list[str]:
    """Kernels to try in order: the request (auto: the platform's fused kernel), then the blockwise fallback.
    Off GPU/TPU, auto is dense XLA when the keys fit one block (blockwise would only be slower) and blockwise
    beyond."""
    if implementation == "auto":
        fused = {"gpu": "cudnn", "tpu": "splash"}.get(platform)
        if fused is None:
            return ["xla" if kv_len <= block_size else "blockwise"]
        return [fused, "blockwise"]
    return [implementation, "blockwise"]


def choose(implementation: str, q_len: int, kv_len: int, head_dim: int, *, dtype, platform: str | None = None,
           block_size: int = 512) -> tuple[str, str | None]:
    """(the kernel that runs, why the first candidate was passed over or None)."""
    platform = platform or target_platform()
    passed_over = None
    for kernel in candidates(implementation, platform, kv_len, block_size):
        problem = unmet_requirement(kernel, q_len=q_len, kv_len=kv_len, head_dim=head_dim, dtype=dtype,
                                    platform=platform)
        if problem is None:
            return kernel, passed_over
        passed_over = passed_over or problem
    raise AssertionError("blockwise runs anything")  # unreachable: the last candidate has no requirement


def resolve(implementation: str, q_len: int, kv_len: int, head_dim: int, *, dtype, platform: str | None = None,
            block_size: int = 512) -> str:
    """The kernel that will run for a requested implementation on this backend, dtype and these shapes."""
    return choose(implementation, q_len, kv_len, head_dim, dtype=dtype, platform=platform, block_size=block_size)[0]


def startup_kernel(implementation: str, *, length: int, head_dim: int, dtype, platform: str, block_size: int = 512,
                   strict: bool = True) -> tuple[str, str | None]:
    """(kernel, a note to print once or None) for a model's self-attention at `length`, checked before anything
    compiles. An explicit request that cannot run here is one ConfigError sentence when `strict` (training: the
    user can change the config) and a note otherwise (inference: the checkpoint's config asked for it); an
    `auto` that falls back from the platform's fused kernel, or splash off TPU, is a note."""
    from llada_jax.config import ConfigError

    kernel, why = choose(implementation, length, length, head_dim, dtype=dtype, platform=platform,
                         block_size=block_size)
    if implementation not in ("auto", kernel):
        if strict:
            auto = resolve("auto", length, length, head_dim, dtype=dtype, platform=platform, block_size=block_size)
            raise ConfigError(f"model.attention={implementation!r} cannot run here: {why}; set model.attention=auto "
                              f"(it picks {auto} here) or another kernel")
        return kernel, f"attention: the checkpoint asks for {implementation}, but {why}, so the {kernel} kernel runs"
    if why is not None:
        return kernel, f"attention: {why}, so the {kernel} kernel runs (model.attention=auto)"
    if kernel == "splash" and platform != "tpu":
        return kernel, f"attention: the splash kernel runs on {platform} in Pallas interpret mode (slow, for tests)"
    return kernel, None


def attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal: bool = False, implementation: str = "auto",
              scale: float | None = None, kv_lengths=None, block_size: int = 512, pattern=None):
    """q [B, T, N, H], k/v [B, S, K, H] (N a multiple of K) -> [B, T, N, H] in q's dtype.

    Segment ids are int [B, T] / [B, S], or tuples carrying visibility ranks (module docstring). `kv_lengths` [B] is an optional promise that every row's segments
    are 1 for the first kv_lengths positions and 0 after (no packing), which the cuDNN path can exploit.
    `pattern` (block_mask.BlockPattern, static) restricts attention by column as block diffusion does.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = resolve(implementation, q.shape[1], k.shape[1], q.shape[-1], dtype=q.dtype, block_size=block_size)
    if isinstance(q_segment_ids, tuple):  # visibility ranks: no sequence lengths, no splash mask for them
        impl, kv_lengths = ("blockwise" if impl == "splash" else impl), None
    if impl == "xla":
        return reference_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, pattern)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, kv_lengths, pattern)
    if impl == "splash":
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, pattern=pattern)
    if pattern is not None and not causal and q.shape[1] == k.shape[1] and not isinstance(q_segment_ids, tuple):
        return tiled_attention.pattern_attention(q, k, v, q_segment_ids, kv_segment_ids, pattern, scale, block_size)
    return blockwise_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, block_size, pattern)


def _visible(q_seg, kv_seg):
    """[B, T, S] boolean: equal segment ids, and the query's rank within the key's [from, to] when ranks are given
    (see the module docstring)."""
    if not isinstance(q_seg, tuple):
        return q_seg[:, :, None] == kv_seg[:, None, :]
    (q_ids, rank), (kv_ids, lo, hi) = q_seg, kv_seg
    same = q_ids[:, :, None] == kv_ids[:, None, :]
    return same & block_mask.rank_visible(rank[:, :, None], lo[:, None, :], hi[:, None, :])


def _length(seg) -> int:
    return (seg[0] if isinstance(seg, tuple) else seg).shape[1]


def _allowed(q_seg, kv_seg, causal: bool, kv_offset=0, pattern=None):
    """[B, T, S] boolean: visible segments, key position <= query position + offset when causal, and the block
    pattern's rule (queries are the last T of the S columns)."""
    ok = _visible(q_seg, kv_seg)
    t, s = _length(q_seg), _length(kv_seg)
    q_pos = jnp.arange(t)[:, None] + (s - t)
    k_pos = jnp.arange(s)[None, :] + kv_offset
    if causal:
        ok = ok & (k_pos <= q_pos)[None]
    if pattern is not None:
        ok = ok & pattern.allowed(q_pos, k_pos)[None]
    return ok


def reference_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, pattern=None):
    """Dense XLA attention: the definition the other kernels must match."""
    mask = _allowed(q_segment_ids, kv_segment_ids, causal, pattern=pattern)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")


def _cudnn_attention(q, k, v, q_seg, kv_seg, causal, scale, kv_lengths, pattern=None):
    """cuDNN flash attention; a block pattern goes in as a dense [B, 1, T, S] mask (cuDNN takes no block-sparse
    mask), which costs T x S bytes per row but no score matrix."""
    if kv_lengths is not None and q.shape[1] == k.shape[1] and pattern is None:
        lengths = kv_lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, query_seq_lengths=lengths,
                                            key_value_seq_lengths=lengths, implementation="cudnn")
    mask = _allowed(q_seg, kv_seg, causal, pattern=pattern)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")


# ---------------------------------------------------------------- blockwise (pure JAX, flash-style backward)

def _kv_blocks(x, block):
    """[B, S, ...] -> [S / block, B, block, ...] (S already a multiple of block); segment tuples leaf by leaf."""
    if isinstance(x, tuple):
        return tuple(_kv_blocks(a, block) for a in x)
    b, s = x.shape[:2]
    return jnp.moveaxis(x.reshape((b, s // block, block) + x.shape[2:]), 1, 0)


def _pad_kv(k, v, kv_seg, block):
    """Pads keys to a multiple of the block; padded keys get segment -1, which no query has."""
    s = k.shape[1]
    block = min(block, s)
    pad = -s % block
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        widen = lambda a, value: jnp.pad(a, ((0, 0), (0, pad)), constant_values=value)  # noqa: E731
        if isinstance(kv_seg, tuple):  # visibility ranks of padded keys: any value (their id -1 hides them)
            kv_seg = (widen(kv_seg[0], -1),) + tuple(widen(a, 0) for a in kv_seg[1:])
        else:
            kv_seg = widen(kv_seg, -1)
    return k, v, kv_seg, block


def _block_scores(qg, kb, q_seg, seg_b, start, causal, scale, q_offset, pattern=None):
    """Masked float32 scores [B, K, G, T, block] of grouped queries qg [B, T, K, G, H] against one key block."""
    s = jnp.einsum("btkgh,bskh->bkgts", qg, kb, preferred_element_type=jnp.float32) * scale
    ok = _visible(q_seg, seg_b)
    q_pos = jnp.arange(_length(q_seg))[:, None] + q_offset
    k_pos = (start + jnp.arange(_length(seg_b)))[None, :]
    if causal:
        ok = ok & (k_pos <= q_pos)[None]
    if pattern is not None:
        ok = ok & pattern.allowed(q_pos, k_pos)[None]
    return jnp.where(ok[:, None, None], s, _NEG), ok[:, None, None]


def _blockwise_forward(qg, k, v, q_seg, kv_seg, causal, scale, block, q_offset, pattern=None):
    """(out [B, T, K, G, H] float32, logsumexp [B, K, G, T])."""
    b, t, nk, g, h = qg.shape
    m0 = jnp.full((b, nk, g, t), _NEG, jnp.float32)
    acc0 = jnp.zeros((b, nk, g, t, h), jnp.float32)

    def step(carry, xs):
        m, l, acc = carry
        kb, vb, seg_b, start = xs
        s, ok = _block_scores(qg, kb, q_seg, seg_b, start, causal, scale, q_offset, pattern)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
        return (m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv), None

    starts = jnp.arange(k.shape[1] // block) * block
    xs = (_kv_blocks(k, block), _kv_blocks(v, block), _kv_blocks(kv_seg, block), starts)
    (m, l, acc), _ = jax.lax.scan(step, (m0, jnp.zeros_like(m0), acc0), xs)
    out = acc / l[..., None]
    return jnp.moveaxis(out, 3, 1), m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _blockwise(qg, k, v, q_seg, kv_seg, causal, scale, block, q_offset, pattern=None):
    out, _ = _blockwise_forward(qg, k, v, q_seg, kv_seg, causal, scale, block, q_offset, pattern)
    return out.astype(qg.dtype)


def _blockwise_fwd(qg, k, v, q_seg, kv_seg, causal, scale, block, q_offset, pattern=None):
    out, lse = _blockwise_forward(qg, k, v, q_seg, kv_seg, causal, scale, block, q_offset, pattern)
    out = out.astype(qg.dtype)
    return out, (qg, k, v, q_seg, kv_seg, out, lse)


def _blockwise_bwd(causal, scale, block, q_offset, pattern, res, d_out):
    """Flash backward: per key block recompute p, then dv = p^T do, ds = p (do v^T - rowsum(do o)), dq += ds k."""
    qg, k, v, q_seg, kv_seg, out, lse = res
    d_out_t = jnp.moveaxis(d_out, 1, 3).astype(jnp.float32)  # [B, K, G, T, H]
    delta = jnp.sum(d_out_t * jnp.moveaxis(out, 1, 3).astype(jnp.float32), axis=-1)

    def step(dq, xs):
        kb, vb, seg_b, start = xs
        s, ok = _block_scores(qg, kb, q_seg, seg_b, start, causal, scale, q_offset, pattern)
        p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)
        dv = jnp.einsum("bkgts,bkgth->bskh", p, d_out_t)
        dp = jnp.einsum("bkgth,bskh->bkgts", d_out_t, vb.astype(jnp.float32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bkgts,bskh->btkgh", ds, kb.astype(jnp.float32))
        dk = jnp.einsum("bkgts,btkgh->bskh", ds, qg.astype(jnp.float32))
        return dq, (dk.astype(kb.dtype), dv.astype(vb.dtype))

    starts = jnp.arange(k.shape[1] // block) * block
    xs = (_kv_blocks(k, block), _kv_blocks(v, block), _kv_blocks(kv_seg, block), starts)
    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qg.shape, jnp.float32), xs)
    unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(k.shape)  # noqa: E731
    return dq.astype(qg.dtype), unblock(dk), unblock(dv), None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, block_size=512, pattern=None):
    """Online-softmax attention over key blocks of `block_size`; memory O(T * block) in both directions. (For a
    block pattern without a causal mask `attention` calls tiled_attention instead, which skips empty tiles.)"""
    b, t, n, h = q.shape
    s, nk = k.shape[1], k.shape[2]
    k, v, kv_seg, block = _pad_kv(k, v, kv_segment_ids, block_size)
    qg = q.reshape(b, t, nk, n // nk, h)
    out = _blockwise(qg, k, v, q_segment_ids, kv_seg, causal, float(scale), block, s - t, pattern)
    return out.reshape(b, t, n, h)


# ---------------------------------------------------------------- splash (Pallas, TPU; interpret mode elsewhere)

def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, interpret: bool | None = None,
                     pattern=None):
    """Pallas splash attention, one kernel call per (batch, heads) shard: shard_map splits batch and heads as
    the mesh rules say, so the kernel never sees a gathered array. Needs q_len == kv_len, a multiple of 128. A block
    pattern becomes a computable mask: the kernel evaluates the rule inside partly masked tiles and skips empty
    ones (tiles divide a stream's length where possible, so none straddles the two streams)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    from llada_jax import sharding

    b, t, n, h = q.shape
    if interpret is None:
        interpret = target_platform() != "tpu"
    if k.shape[2] != n:  # grouped-query attention: give every query head its own copy of the shared head
        k, v = (jnp.repeat(x, n // k.shape[2], axis=2) for x in (k, v))
    stream = pattern.noisy_length if pattern is not None and pattern.noisy_length else t
    block = next((size for size in (512, 256) if t % size == 0 and stream % size == 0), 128)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

    def per_shard(q, k, v, q_seg, kv_seg):
        heads = q.shape[2]
        base = splash.CausalMask((t, t)) if causal else splash.FullMask((t, t))
        if pattern is not None:
            base = splash_pattern_mask(pattern, t) if not causal else base & splash_pattern_mask(pattern, t)
        kernel = splash.make_splash_mha(splash.MultiHeadMask([base] * heads), block_sizes=sizes,
                                        head_shards=1, q_seq_shards=1, interpret=interpret)
        heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, N, H] -> [B, N, T, H]
        run = lambda qq, kk, vv, qs, ks: kernel(qq, kk, vv, segment_ids=splash.SegmentIds(q=qs, kv=ks))  # noqa: E731
        out = jax.vmap(run)(heads_first(q * scale), heads_first(k), heads_first(v), q_seg, kv_seg)
        return heads_first(out)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return per_shard(q, k, v, q_segment_ids, kv_segment_ids)
    qkv_spec = sharding.logical_to_spec(("batch", "length", "heads", "head_dim"), q.shape, mesh)
    seg_spec = sharding.logical_to_spec(("batch", "length"), q_segment_ids.shape, mesh)
    seg_spec = jax.sharding.PartitionSpec(qkv_spec[0], *seg_spec[1:])
    return jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,) * 2,
                         out_specs=qkv_spec, check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)



@functools.lru_cache(maxsize=None)
def splash_pattern_mask(pattern, length: int):
    """A splash computable mask for a block pattern: hashable (splash dedupes its per-head masks by hash) and
    evaluated by the kernel from column indices, so no [length, length] array is stored."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    class PatternMask(masks._ComputableMask):  # noqa: SLF001 - the kernel's extension point for computed masks
        key = ("block_pattern", pattern, length)

        def __init__(self):
            super().__init__(shape=(length, length), mask_function=pattern.allowed)

        def __eq__(self, other):
            return getattr(other, "key", None) == self.key

        def __hash__(self):
            return hash(self.key)

    return PatternMask()
