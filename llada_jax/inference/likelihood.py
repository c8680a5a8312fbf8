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

Many requests are scored together by `batched_log_likelihoods`, with the same masks and estimates: each
request's distinct maskings are scored once (a short answer has few), rows of many requests share forward
passes (sorted by padded length, sharded over the mesh), and logits are computed only over answer spans.

Sequences are padded to a multiple of `bucket` tokens (the padding is its own attention segment, so it
changes nothing) and the lengths are traced values: scoring many answers compiles once per bucket.

A block-diffusion model (`block_size` given) is scored with the block-diffusion ELBO (block_likelihood.py): in
every block holding answer positions, l_b of its n_b answer positions are masked (stratified as above, with an
independent offset per block) and each block's masked CE is weighted n_b / l_b.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.objectives import losses
from llada_jax.models import registry as model_lib
from llada_jax.inference import block_likelihood, block_sampling
from llada_jax.inference.sampling import guided_logits


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


def sample_masks(key, batch: int, total: int, prompt_len, answer_len, estimator: str = "unbiased",
                 block_size: int | None = None) -> jax.Array:
    """[batch, total] bool: for each sample, a uniformly random subset of l_j answer positions (stratified l_j);
    with `block_size`, such a subset in every block (`block_masks`)."""
    if block_size is not None:
        return block_masks(key, batch, total, prompt_len, answer_len, estimator, block_size)
    key_l, key_perm = jax.random.split(key)
    counts = stratified_mask_counts(key_l, batch, answer_len, estimator)
    cols = jnp.arange(total)
    in_answer = (cols >= prompt_len) & (cols < prompt_len + answer_len)
    noise = jnp.where(in_answer, jax.random.uniform(key_perm, (batch, total)), 2.0)  # non-answer ranks last
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # a uniformly random order of the answer positions
    return (ranks < counts[:, None]) & in_answer


def block_masks(key, batch: int, total: int, prompt_len, answer_len, estimator: str, block_size: int):
    """[batch, total] bool: in every block of columns holding n_b answer positions, a stratified count l_b in
    1..n_b of them (an independent offset per block), chosen uniformly at random."""
    key_l, key_perm = jax.random.split(key)
    cols = jnp.arange(total)
    block = cols // block_size
    in_answer = (cols >= prompt_len) & (cols < prompt_len + answer_len)
    n = jax.ops.segment_sum(in_answer.astype(jnp.int32), block, num_segments=-(-total // block_size))
    offsets = jax.random.randint(key_l, n.shape, 1, jnp.maximum(n, 1) + 1)
    counts = jax.vmap(lambda k, m: stratified_counts(k, batch, jnp.maximum(m, 1), estimator), out_axes=1)(offsets, n)
    counts = jnp.where(n[None, :] > 0, counts, 0)  # [batch, blocks]
    noise = jnp.where(in_answer, jax.random.uniform(key_perm, (batch, total)), 2.0) + 4.0 * block  # block-major
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1) - block * block_size  # rank inside the block
    return (ranks < counts[:, block]) & in_answer


def model_inputs(tokens, masked, prompt_lens, answer_lens, mask_id: int):
    """(noisy tokens, positions, segment ids, prompt mask) [R, T] for rows of prompt, answer, then padding
    (the padding is its own attention segment, so it changes nothing)."""
    rows, total = tokens.shape
    cols = jnp.arange(total)[None, :]
    segment_ids = (cols < (prompt_lens + answer_lens)[:, None]).astype(jnp.int32)
    return (jnp.where(masked, mask_id, tokens), jnp.broadcast_to(cols, (rows, total)), segment_ids,
            cols < prompt_lens[:, None])


def masked_nll(graphdef, params, tokens, masked, prompt_lens, answer_lens, *, mask_id: int, cfg_scale: float):
    """Per-row (L / l) * sum of masked CE. tokens, masked [R, T]; each row is prompt, answer, then padding."""
    noisy, positions, segment_ids, prompt_mask = model_inputs(tokens, masked, prompt_lens, answer_lens, mask_id)
    logits, _ = guided_logits(graphdef, params, noisy, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
    ce = losses.cross_entropy(logits, tokens)
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


def log_likelihood(graphdef, params, prompt: list[int], answer: list[int], key, *, mask_id: int,
                   mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                   bucket: int = 32, estimator: str = "unbiased",
                   block_size: int | None = None) -> tuple[float, float]:
    """(estimate of log p(answer | prompt), its Monte Carlo standard error).

    Runs max(mc_num // batch_size, 1) mini-batches, as the official code does. The standard error comes from
    the spread of the mini-batch means (independent; the samples inside one are stratified, not independent).
    Inputs are token ids; the caller checks the length against the model's max_seq_len. A block-diffusion
    model (`block_size`) is scored through `batched_log_likelihoods` (the same masks for the same key).
    """
    from llada_jax.config import ConfigError

    if not answer:
        raise ConfigError("the answer is empty; give at least one answer token to score")
    if block_size is not None:
        return batched_log_likelihoods(
            graphdef, params, [(prompt, answer)], np.asarray(jax.random.key_data(key))[None], mask_id=mask_id,
            mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale, bucket=bucket, estimator=estimator,
            block_size=block_size)[0]
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


def check_options(mc_num: int, batch_size: int, estimator: str, cfg_scale: float = 0.0,
                  block_size: int | None = None) -> None:
    from llada_jax.config import ConfigError

    if block_size is not None:
        block_sampling.check_no_guidance(cfg_scale)
    if mc_num <= 0 or batch_size <= 0:
        raise ConfigError(f"mc_num={mc_num} and batch_size={batch_size} must be positive")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")


def batched_log_likelihoods(graphdef, params, requests, key_data, *, mask_id: int, mc_num: int = 128,
                            batch_size: int = 16, cfg_scale: float = 0.0, bucket: int = 32,
                            estimator: str = "unbiased", rows_per_pass: int | None = None, mesh=None,
                            progress=None, block_size: int | None = None) -> list[tuple[float, float]]:
    """`log_likelihood` for many (prompt ids, answer ids) requests at once: [(estimate, stderr)] in order.

    key_data [N, 2] uint32 (jax.random.key_data of each request's key): with the same key a request gets
    exactly the masks `log_likelihood` would draw, and the same estimate. Work saved without changing it:
    - a masking drawn twice for one request is scored once (a short answer has few distinct maskings: an answer
      of L tokens has at most 2^L - 1, so mc_num=128 samples of a 4-token answer are about 15 forward rows);
    - rows of all requests share forward passes of about `rows_per_pass` rows (default: 32 on CPU, 256 on
      accelerators), sorted by padded width;
    - the output head runs only over each row's answer window, not the prompt.
    With a mesh, every pass is split over its batch axes; on several hosts each process feeds its share of
    the rows and all processes receive every value. `progress(done, total)` counts rows scored. `block_size`:
    a block-diffusion model, scored with its ELBO (module docstring).
    """
    from llada_jax.config import ConfigError

    check_options(mc_num, batch_size, estimator, cfg_scale, block_size)
    if any(not answer for _, answer in requests):
        raise ConfigError("an answer is empty; give at least one answer token to score")
    minibatches = max(mc_num // batch_size, 1)
    rows, inverses = _distinct_rows(requests, key_data, minibatches, batch_size, bucket, estimator, block_size)
    values = np.zeros(len(rows))
    per_pass = _rows_per_pass(rows_per_pass, mesh)
    order = sorted(range(len(rows)), key=lambda i: rows[i][:2])
    done = 0
    for chunk in _same_shape_chunks(order, rows, per_pass):
        values[chunk] = _score_rows(graphdef, params, requests, [rows[i] for i in chunk],
                                    _pass_rows(len(chunk), per_pass, mesh), mesh, mask_id=mask_id,
                                    **scorer_options(cfg_scale, block_size))
        done += len(chunk)
        if progress is not None:
            progress(done, len(rows))
    out = []
    for (_, answer), (first, inverse) in zip(requests, inverses):
        samples = values[first + inverse].reshape(minibatches, batch_size)
        out.append((-float(samples[0, 0]), 0.0) if len(answer) == 1 else summarize(samples))
    return out


def scorer_options(cfg_scale: float, block_size: int | None) -> dict:
    """What `_score_rows` passes its scorer: guidance for a full-sequence model, the block size for a
    block-diffusion one."""
    return {"cfg_scale": cfg_scale} if block_size is None else {"block_size": block_size}


def answer_window(answer_len: int) -> int:
    """The static answer span a forward pass computes logits for: the next power of two (few compiled shapes)."""
    return 1 << max(answer_len - 1, 0).bit_length()


def _distinct_rows(requests, key_data, minibatches: int, batch: int, bucket: int, estimator: str,
                   block_size: int | None = None):
    """Every request's masks (as `log_likelihood` draws them), reduced to its distinct ones.

    Returns rows [(padded width, answer window, request, answer-span mask)] and, per request, (index of its
    first row, [minibatches * batch] index of each sample's row among its own).
    """
    widths = [-(-(len(p) + len(a)) // bucket) * bucket for p, a in requests]
    by_width: dict[int, list[int]] = {}
    for r, width in enumerate(widths):
        by_width.setdefault(width, []).append(r)
    spans = [None] * len(requests)
    for width, members in by_width.items():
        for start in range(0, len(members), MASK_CHUNK):
            part = members[start:start + MASK_CHUNK]
            padded = part + [part[0]] * (MASK_CHUNK - len(part))
            masks = np.asarray(request_masks(
                np.asarray(key_data)[padded], np.asarray([len(requests[r][0]) for r in padded], np.int32),
                np.asarray([len(requests[r][1]) for r in padded], np.int32), minibatches=minibatches, batch=batch,
                total=width, estimator=estimator, block_size=block_size))
            for r, mask in zip(part, masks):
                prompt_len, answer_len = len(requests[r][0]), len(requests[r][1])
                spans[r] = mask[:, prompt_len:prompt_len + answer_len]
    rows, inverses = [], []
    for r, span in enumerate(spans):
        distinct, inverse = np.unique(span, axis=0, return_inverse=True)
        inverses.append((len(rows), inverse.reshape(-1)))
        window = answer_window(len(requests[r][1]))
        rows += [(widths[r], window, r, mask) for mask in distinct]
    return rows, inverses


MASK_CHUNK = 32  # requests whose masks are drawn in one call (padded, so one compiled shape per width)


@functools.partial(jax.jit, static_argnames=("minibatches", "batch", "total", "estimator", "block_size"))
def request_masks(key_data, prompt_lens, answer_lens, *, minibatches: int, batch: int, total: int,
                  estimator: str, block_size: int | None = None):
    """[N, minibatches * batch, total] masks of N requests: mini-batch i uses fold_in(key, i), as in
    `log_likelihood`."""

    def one_request(data, prompt_len, answer_len):
        key = jax.random.wrap_key_data(data)
        draw = lambda i: sample_masks(jax.random.fold_in(key, i), batch, total, prompt_len, answer_len,  # noqa: E731
                                      estimator, block_size)
        return jax.vmap(draw)(jnp.arange(minibatches)).reshape(minibatches * batch, total)

    return jax.vmap(one_request)(key_data, prompt_lens, answer_lens)


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "mask_id", "cfg_scale"))
def rows_nll(graphdef, params, seqs, masked, prompt_lens, answer_lens, *, window: int, mask_id: int,
             cfg_scale: float = 0.0):
    """[R] (L / l) * sum of masked CE, like `masked_nll`, with the output head run over only the `window`
    columns from each row's answer start (the vocabulary projection is most of a small model's work)."""
    from llada_jax.models.output_head import project
    from llada_jax.inference.sampling_cache import combine_guidance, with_guidance

    rows, total = seqs.shape
    noisy, positions, segment_ids, prompt_mask = model_inputs(seqs, masked, prompt_lens, answer_lens, mask_id)
    head = model_lib.apply_head(graphdef, params, *with_guidance(noisy, positions, segment_ids, prompt_mask,
                                                                  mask_id, cfg_scale))
    take = jnp.minimum(prompt_lens[:, None] + jnp.arange(window)[None, :], total - 1)  # [R, window]
    copies = head.hidden.shape[0] // rows  # 2 with guidance: conditional rows, then unconditional ones
    hidden = jnp.take_along_axis(head.hidden, jnp.tile(take, (copies, 1))[..., None], axis=1)
    logits = combine_guidance(project(hidden, head.weight), cfg_scale)
    ce = losses.cross_entropy(logits, jnp.take_along_axis(seqs, take, axis=1))
    scored = jnp.take_along_axis(masked, take, axis=1) & (jnp.arange(window)[None, :] < answer_lens[:, None])
    return jnp.sum(ce * scored, axis=1) * answer_lens / jnp.sum(scored, axis=1)


def _same_shape_chunks(order, rows, size: int):
    """Consecutive runs of at most `size` row indices sharing (width, answer window); `order` sorted by them."""
    chunk = []
    for i in order:
        if chunk and (len(chunk) == size or rows[i][:2] != rows[chunk[0]][:2]):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def _pass_rows(rows: int, per_pass: int, mesh) -> int:
    """A pass's padded row count: the next power of two times the mesh multiple, at most `per_pass` (a short
    chunk is not padded to a full pass; a few shapes compile)."""
    multiple = batch_multiple(mesh)
    units = -(-rows // multiple)
    return min(multiple * (1 << (units - 1).bit_length()), per_pass)


# Rows per forward pass when none is given. A CPU is compute-bound already at a few rows, and bigger passes only
# add padding (eval_throughput.py, small model: 13.3x the one-request loop at 32 rows, 12.4x at 64); an
# accelerator needs many rows to be busy.
CPU_ROWS_PER_PASS = 32
ACCELERATOR_ROWS_PER_PASS = 256


def default_rows_per_pass() -> int:
    return CPU_ROWS_PER_PASS if jax.default_backend() == "cpu" else ACCELERATOR_ROWS_PER_PASS


def _rows_per_pass(rows_per_pass: int | None, mesh) -> int:
    """Rows per forward pass: about rows_per_pass, a multiple of the batch shards and of the processes."""
    if rows_per_pass is None:
        rows_per_pass = default_rows_per_pass()
    multiple = batch_multiple(mesh)
    return -(-max(rows_per_pass, 1) // multiple) * multiple


def batch_multiple(mesh) -> int:
    """What a batch split over the mesh's batch axes and the processes must be a multiple of."""
    if mesh is None:
        return jax.process_count()
    from llada_jax import sharding

    shards = mesh.size // sharding.batch_sharding(mesh, 1).shard_shape((mesh.size,))[0]
    return math.lcm(shards, jax.process_count())


def _score_rows(graphdef, params, requests, chunk, per_pass, mesh, **options) -> np.ndarray:
    """rows_nll on one chunk of rows padded to `per_pass` (copies of its first); [len(chunk)] values."""
    width, window = chunk[0][:2]
    padded = chunk + [chunk[0]] * (per_pass - len(chunk))
    seqs = np.zeros((per_pass, width), np.int32)
    masked = np.zeros((per_pass, width), bool)
    for n, (_, _, r, span) in enumerate(padded):
        prompt, answer = requests[r]
        seqs[n, :len(prompt) + len(answer)] = list(prompt) + list(answer)
        masked[n, len(prompt):len(prompt) + len(answer)] = span
    arrays = {"seqs": seqs, "masked": masked,
              "prompt_lens": np.asarray([len(requests[r][0]) for _, _, r, _ in padded], np.int32),
              "answer_lens": np.asarray([len(requests[r][1]) for _, _, r, _ in padded], np.int32)}
    scorer = rows_nll if "block_size" not in options else block_likelihood.block_rows_nll
    if mesh is None:
        return np.asarray(scorer(graphdef, params, **arrays, window=window, **options))[:len(chunk)]
    from jax.experimental import multihost_utils

    from llada_jax import sharding

    share = per_pass // jax.process_count()
    start = jax.process_index() * share
    local = {name: value[start:start + share] for name, value in arrays.items()}
    with jax.set_mesh(mesh):
        out = scorer(graphdef, params, **sharding.global_batch(local, mesh), window=window, **options)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))[:len(chunk)]
