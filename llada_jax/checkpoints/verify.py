"""Verification of restored training state: every array finite and equal, bit for bit, to what was saved.

Each checkpoint's meta carries a 64-bit digest of every array (`digests`), computed on device when it is saved
and again when it is restored. The digest is a sum over elements of a hash of (the element's bits, its
position), in wrapping uint32 arithmetic: integer addition is associative, so the value does not depend on how
the array is sharded or in which order devices add their parts (a checkpoint restored onto another mesh
gives the same digest), and any changed element (a sign flip, two swapped values, a change that keeps the sum)
changes it except with probability about 2**-64. Checkpoints written before digests existed carry
`checksums` (sum of |x| per float array), which are still checked when no digest is present.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DIGEST_FIELD = "digests"  # meta key: {array path: 16 hex digits}
LEGACY_FIELD = "checksums"  # meta key of older checkpoints: [sum |x| per float array]
_GOLDEN = np.uint32(0x9E3779B9)  # positions are spread over all 32 bits before mixing
_SEED = np.uint32(0x6C6C6164)


def finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _fmix(h):
    """MurmurHash3's 32-bit finaliser: a bijection in which every input bit flips each output bit about half the
    time, so nearby inputs (one flipped sign bit) give unrelated outputs."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(x):
    """The array's bit patterns as uint32 (64-bit elements become two words; bool, 8 and 16 bits are widened)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    words = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[jnp.dtype(x.dtype).itemsize]
    return jax.lax.bitcast_convert_type(x, words).astype(jnp.uint32)


def _positions(shape):
    """Each element's row-major index (mod 2**32), built from per-axis iotas so a sharded array computes
    global positions in every shard."""
    pos = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        pos = pos + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride % 2**32)
        stride *= shape[axis]
    return pos


def _array_digest(x):
    """[2] uint32: the sum over elements of h = hash(bits, position), and the sum of h times an odd number made
    from the position. A single changed element always changes both (the hash is a bijection, odd numbers are
    invertible mod 2**32); several changed elements leave both unchanged with probability about 2**-64."""
    bits = _bits(x)
    pos = _positions(bits.shape)
    h = _fmix(bits ^ (pos * _GOLDEN + _SEED))
    return jnp.stack([jnp.sum(h, dtype=jnp.uint32), jnp.sum(h * (pos * np.uint32(2) + np.uint32(1)),
                                                            dtype=jnp.uint32)])


@jax.jit
def _digests_and_finite(leaves):
    digests = jnp.stack([_array_digest(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)
    # x * 0 is 0 for every finite x and NaN for NaN or inf: one float sum says whether all are finite (a fast
    # reduction everywhere, unlike a boolean all())
    sums = [jnp.sum(x * 0, dtype=jnp.float32) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    return digests, jnp.isfinite(jnp.sum(jnp.stack(sums))) if sums else jnp.bool_(True)


def _path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def state_digests(params, opt_state) -> tuple[dict[str, str], bool]:
    """({'params/wte': '0123456789abcdef', 'opt_state/...': ...}, whether every float is finite), computed on
    device in one jitted pass over the arrays (on any mesh, with the same result)."""
    flat = jax.tree_util.tree_flatten_with_path({"params": params, "opt_state": opt_state})[0]
    digests, ok = jax.device_get(_digests_and_finite([leaf for _, leaf in flat]))
    names = [_path_name(path) for path, _ in flat]
    return {name: f"{int(a):08x}{int(b):08x}" for name, (a, b) in zip(names, digests)}, bool(ok)


@jax.jit
def _abs_sums(tree):
    return [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]


def checksums(params, opt_state) -> list[float]:
    """Sum of |x| of every float array: what checkpoints written before the digests carry (kept to verify them)."""
    return [float(x) for x in jax.device_get(_abs_sums((params, opt_state)))]


def _legacy_problem(state, saved) -> str | None:
    sums = checksums(state.params, state.opt_state)
    if len(saved) != len(sums):
        return "its checksums do not match its arrays"
    for got, want in zip(sums, saved):  # summing on another mesh reorders float32 additions: a tolerance
        if abs(got - want) > 1e-4 * max(abs(want), 1.0):
            return "its data does not match the checksums written with it"
    return None


def verify_restored(state, meta) -> str | None:
    """None when a restored state is finite and matches the digests (or older checksums) saved with it, else why
    not, naming the first array that differs."""
    digests, ok = state_digests(state.params, state.opt_state)
    if not ok:
        return "it holds NaN or infinite values"
    meta = meta if isinstance(meta, dict) else {}
    saved = meta.get(DIGEST_FIELD)
    if isinstance(saved, dict):
        if set(saved) != set(digests):
            return "its digests do not name the arrays it holds"
        changed = [name for name in digests if digests[name] != saved[name]]
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            return f"its data does not match the digests written with it ({changed[0]}{more} changed)"
        return None
    if meta.get(LEGACY_FIELD) is not None:
        return _legacy_problem(state, meta[LEGACY_FIELD])
    return None
