"""Monte Carlo conditional log-likelihood log p(answer | prompt) for a mask predictor (get_log_likelihood.py).

Each sample masks l of the L answer tokens (a uniformly random subset) and scores (L / l) * sum of the CE at
the masked positions; the prompt is never masked. Over l uniform on {1..L} and uniform subsets this has
expectation sum_l (1/l) E[sum of masked CE] = the ELBO bound on -log p(a | p), so the mean over samples
estimates -log p(a | p) from above and candidates are ranked by the estimate of log p.

Within a mini-batch of B samples the l are stratified from one uniform offset k in {1..L}. Two roundings
are offered (`estimator`):
- "unbiased" (the default here): l_j = ((k + floor(j L / B + 1/2) - 1) mod L) + 1. Rounding the shift alone
  keeps every l_j uniform over k, so the estimator's expectation is the ELBO bound exactly.
- "official": get_log_likelihood.py rounds k + j L / B half-to-even (torch.round). That differs only where
  j L / B ends in exactly .5, and there l_j is no longer uniform (e.g. L=3, B=2 gives l_1 in {2, 1, 1}), so
  its expectation is off by a few hundredths to tenths of a nat on short answers. Use it to reproduce the
  official table. (torch computes k + j L / B in float32 via linspace; exact arithmetic is used here.)
The tests enumerate both expectations exactly on a tiny model.

Many requests are scored together by `batched_log_likelihoods`: the unit of work is one mini-batch of one
request, and forward passes hold many such groups (rows sorted by padded length), sharded over the mesh.
An answer of one token is scored exactly in one row (every sample would mask that token alone).

Sequences are padded to a multiple of `bucket` tokens (the padding is its own attention segment, so it
changes nothing) and the lengths are traced values: scoring many answers compiles once per bucket.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import diffusion
from llada_jax.sampling import guided_logits


ESTIMATORS = ("unbiased", "official")


def stratified_counts(offset, batch: int, answer_len, estimator: str = "unbiased"):
    """Numbers of masked answer tokens [batch] for offset k in 1..L (see the module docstring for `estimator`)."""
    j = jnp.arange(batch, dtype=jnp.int32)
    if estimator == "unbiased":
        rounded = offset + (2 * j * answer_len + batch) // (2 * batch)  # k + floor(j L / B + 1/2), exactly
    elif estimator == "official":  # round-half-to-even(k + j L / B) in exact integer arithmetic
        whole, rest = jnp.divmod(offset * batch + j * answer_len, batch)
        up = (2 * rest > batch) | ((2 * rest == batch) & (whole % 2 == 1))
        rounded = whole + up.astype(whole.dtype)
    else:
        raise ValueError(f"estimator={estimator!r} is unknown; use one of {ESTIMATORS}")
    return (rounded - 1) % answer_len + 1


def stratified_mask_counts(key, batch: int, answer_len, estimator: str = "unbiased") -> jax.Array:
    """One uniform offset per mini-batch, then `stratified_counts`."""
    return stratified_counts(jax.random.randint(key, (), 1, answer_len + 1), batch, answer_len, estimator)


def sample_masks(key, batch: int, total: int, prompt_len, answer_len, estimator: str = "unbiased") -> jax.Array:
    """[batch, total] bool: for each sample, a uniformly random subset of l_j answer positions (stratified l_j)."""
    key_l, key_perm = jax.random.split(key)
    counts = stratified_mask_counts(key_l, batch, answer_len, estimator)
    cols = jnp.arange(total)
    in_answer = (cols >= prompt_len) & (cols < prompt_len + answer_len)
    noise = jnp.where(in_answer, jax.random.uniform(key_perm, (batch, total)), 2.0)  # non-answer ranks last
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # a uniformly random order of the answer positions
    return (ranks < counts[:, None]) & in_answer


def masked_nll(graphdef, params, tokens, masked, prompt_lens, answer_lens, *, mask_id: int, cfg_scale: float):
    """Per-row (L / l) * sum of masked CE. tokens, masked [R, T]; each row is prompt, answer, then padding."""
    rows, total = tokens.shape
    cols = jnp.arange(total)[None, :]
    noisy = jnp.where(masked, mask_id, tokens)
    positions = jnp.broadcast_to(cols, (rows, total))
    segment_ids = (cols < (prompt_lens + answer_lens)[:, None]).astype(jnp.int32)
    prompt_mask = cols < prompt_lens[:, None]
    logits, _ = guided_logits(graphdef, params, noisy, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
    ce = diffusion.cross_entropy(logits, tokens)
    counts = jnp.sum(masked, axis=1)
    return jnp.sum(ce * masked, axis=1) * answer_lens / counts


@functools.partial(jax.jit, static_argnames=("graphdef", "batch", "mask_id", "cfg_scale", "estimator"))
def minibatch_nll(graphdef, params, seq, prompt_len, answer_len, key, *, batch: int, mask_id: int,
                  cfg_scale: float = 0.0, estimator: str = "unbiased"):
    """Per-sample (L / l) * sum of masked CE for `batch` samples of one sequence.

    seq [T]: prompt (prompt_len tokens), answer (answer_len tokens), then any padding; the lengths may be traced.
    """
    total = seq.shape[0]
    masked = sample_masks(key, batch, total, prompt_len, answer_len, estimator)
    tokens = jnp.broadcast_to(seq, (batch, total))
    lens = jnp.full((batch,), 1, jnp.int32)
    return masked_nll(graphdef, params, tokens, masked, lens * prompt_len, lens * answer_len, mask_id=mask_id,
                      cfg_scale=cfg_scale)


@functools.partial(jax.jit, static_argnames=("graphdef", "batch", "mask_id", "cfg_scale", "estimator"))
def group_nll(graphdef, params, seqs, prompt_lens, answer_lens, key_data, minibatch, *, batch: int, mask_id: int,
              cfg_scale: float = 0.0, estimator: str = "unbiased"):
    """[G, batch] per-sample values for G mini-batches (of any requests) in one forward pass of G * batch rows.

    Group g is mini-batch `minibatch[g]` of the request whose key is `key_data[g]`: its masks are those
    `minibatch_nll` draws with fold_in(key, minibatch[g]), so both paths give the same numbers.
    """
    groups, total = seqs.shape

    def masks(data, index, prompt_len, answer_len):
        key = jax.random.fold_in(jax.random.wrap_key_data(data), index)
        return sample_masks(key, batch, total, prompt_len, answer_len, estimator)

    masked = jax.vmap(masks)(key_data, minibatch, prompt_lens, answer_lens).reshape(groups * batch, total)

    def per_row(x):  # each group's value repeated for its `batch` rows
        return jnp.broadcast_to(x[:, None], (groups, batch) + x.shape[1:]).reshape((groups * batch,) + x.shape[1:])

    values = masked_nll(graphdef, params, per_row(seqs), masked, per_row(prompt_lens), per_row(answer_lens),
                        mask_id=mask_id, cfg_scale=cfg_scale)
    return values.reshape(groups, batch)


def log_likelihood(graphdef, params, prompt: list[int], answer: list[int], key, *, mask_id: int,
                   mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                   bucket: int = 32, estimator: str = "unbiased") -> tuple[float, float]:
    """(estimate of log p(answer | prompt), its Monte Carlo standard error).

    Runs max(mc_num // batch_size, 1) mini-batches, as the official code does. The standard error comes from
    the spread of the mini-batch means (independent; the samples inside one are stratified, not independent).
    Inputs are token ids; the caller checks the length against the model's max_seq_len.
    """
    from llada_jax.config import ConfigError

    if not answer:
        raise ConfigError("the answer is empty; give at least one answer token to score")
    check_options(mc_num, batch_size, estimator)
    length = len(prompt) + len(answer)
    padded = list(prompt) + list(answer) + [0] * (-length % bucket)
    seq = jnp.asarray(padded, jnp.int32)
    batches = [np.asarray(minibatch_nll(graphdef, params, seq, jnp.int32(len(prompt)), jnp.int32(len(answer)),
                                        jax.random.fold_in(key, i), batch=batch_size, mask_id=mask_id,
                                        cfg_scale=cfg_scale, estimator=estimator))
               for i in range(max(mc_num // batch_size, 1))]
    return summarize(np.stack(batches))


def summarize(values: np.ndarray) -> tuple[float, float]:
    """[minibatches, batch] per-sample values -> (log-likelihood estimate, its Monte Carlo standard error).

    The standard error comes from the spread of the mini-batch means (independent; the samples inside one
    are stratified, not independent); with one mini-batch its samples are treated as independent
    (conservative), and one sample has no error to estimate (nan).
    """
    means = values.mean(axis=1)
    if len(means) > 1:
        stderr = means.std(ddof=1) / math.sqrt(len(means))
    else:
        stderr = values[0].std(ddof=1) / math.sqrt(values.shape[1]) if values.shape[1] > 1 else float("nan")
    return -float(means.mean()), float(stderr)


def check_options(mc_num: int, batch_size: int, estimator: str) -> None:
    from llada_jax.config import ConfigError

    if mc_num <= 0 or batch_size <= 0:
        raise ConfigError(f"mc_num={mc_num} and batch_size={batch_size} must be positive")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")


def batched_log_likelihoods(graphdef, params, requests, key_data, *, mask_id: int, mc_num: int = 128,
                            batch_size: int = 16, cfg_scale: float = 0.0, bucket: int = 32,
                            estimator: str = "unbiased", rows_per_pass: int = 256, mesh=None,
                            progress=None) -> list[tuple[float, float]]:
    """`log_likelihood` for many (prompt ids, answer ids) requests at once: [(estimate, stderr)] in order.

    key_data [N, 2] uint32 (jax.random.key_data of each request's key): with the same key a request gets
    exactly the masks `log_likelihood` would draw. Mini-batches of all requests are sorted by padded width
    and packed about `rows_per_pass` rows to a forward pass; one-token answers take one exact row (stderr 0).
    With a mesh, every pass is split over its batch axes; on several hosts each process feeds its share of
    the groups and all processes receive every value. `progress(done, total)` counts rows.
    """
    from llada_jax.config import ConfigError

    check_options(mc_num, batch_size, estimator)
    if any(not answer for _, answer in requests):
        raise ConfigError("an answer is empty; give at least one answer token to score")
    minibatches = max(mc_num // batch_size, 1)
    exact, sampled = [], []
    for r, (prompt, answer) in enumerate(requests):
        width = -(-(len(prompt) + len(answer)) // bucket) * bucket
        if len(answer) == 1:
            exact.append((width, r, 0))
        else:
            sampled += [(width, r, i) for i in range(minibatches)]
    values = {}
    total, done = len(exact) + len(sampled) * batch_size, 0
    for batch, groups in ((1, exact), (batch_size, sampled)):
        per_pass = _groups_per_pass(rows_per_pass, batch, mesh)
        for chunk in _same_width_chunks(sorted(groups), per_pass):
            out = _score_groups(graphdef, params, requests, key_data, chunk, per_pass, batch, mesh,
                                mask_id=mask_id, cfg_scale=cfg_scale, estimator=estimator)
            for (_, r, i), row in zip(chunk, out):
                values.setdefault(r, np.zeros((1 if batch == 1 else minibatches, batch)))[i] = row
            done += len(chunk) * batch
            if progress is not None:
                progress(done, total)
    return [(-float(values[r][0, 0]), 0.0) if len(answer) == 1 else summarize(values[r])
            for r, (_, answer) in enumerate(requests)]


def _same_width_chunks(groups, size: int):
    """Consecutive runs of at most `size` groups sharing a padded width (groups sorted by width)."""
    chunk = []
    for group in groups:
        if chunk and (len(chunk) == size or group[0] != chunk[0][0]):
            yield chunk
            chunk = []
        chunk.append(group)
    if chunk:
        yield chunk


def _groups_per_pass(rows_per_pass: int, batch: int, mesh) -> int:
    """Groups per forward pass: about rows_per_pass rows, a multiple of the batch shards and of the processes."""
    groups = max(rows_per_pass // batch, 1)
    multiple = batch_multiple(mesh)
    return -(-groups // multiple) * multiple


def batch_multiple(mesh) -> int:
    """What a batch split over the mesh's batch axes and the processes must be a multiple of."""
    if mesh is None:
        return jax.process_count()
    from llada_jax import sharding

    shards = mesh.size // sharding.batch_sharding(mesh, 1).shard_shape((mesh.size,))[0]
    return math.lcm(shards, jax.process_count())


def _score_groups(graphdef, params, requests, key_data, chunk, per_pass, batch, mesh, **options) -> np.ndarray:
    """group_nll on one chunk padded to `per_pass` groups (copies of its first); [len(chunk), batch] values."""
    width = chunk[0][0]
    padded = chunk + [chunk[0]] * (per_pass - len(chunk))
    seqs = np.zeros((per_pass, width), np.int32)
    for g, (_, r, _) in enumerate(padded):
        tokens = list(requests[r][0]) + list(requests[r][1])
        seqs[g, :len(tokens)] = tokens
    arrays = {"seqs": seqs,
              "prompt_lens": np.asarray([len(requests[r][0]) for _, r, _ in padded], np.int32),
              "answer_lens": np.asarray([len(requests[r][1]) for _, r, _ in padded], np.int32),
              "key_data": np.asarray(key_data)[[r for _, r, _ in padded]],
              "minibatch": np.asarray([i for _, _, i in padded], np.int32)}
    if mesh is None:
        return np.asarray(group_nll(graphdef, params, **arrays, batch=batch, **options))[:len(chunk)]
    from jax.experimental import multihost_utils

    from llada_jax import sharding

    share = per_pass // jax.process_count()
    start = jax.process_index() * share
    local = {name: value[start:start + share] for name, value in arrays.items()}
    with jax.set_mesh(mesh):
        out = group_nll(graphdef, params, **sharding.global_batch(local, mesh), batch=batch, **options)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))[:len(chunk)]
