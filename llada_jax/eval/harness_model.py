"""The lm-evaluation-harness model `llada_jax`: any checkpoint `llada-jax sample` accepts, scored in batches.

The official harness class handles one request at a time (mc_num / batch_size forward passes per answer).
Here every request type is batched across requests and sharded over the checkpoint's mesh:
- loglikelihood: `likelihood.batched_log_likelihoods` (the distinct Monte Carlo rows of many requests per
  pass: a short answer has few, a one-token answer one); the greedy flag, when asked, by batched greedy decoding of the answer span.
- generate_until: `sampling.generate` on batches of left-padded prompts (its fast modes: threshold or
  factor parallel decoding, prefix or dual KV cache), cut at EOS and at the stop strings.
- loglikelihood_rolling: the ELBO of the whole text (windows of max_seq_len scored with an empty prompt),
  which the official class does not offer.
A block-diffusion checkpoint (train.objective=block_diffusion) is decoded block by block with its block size and an
exact cache, and scored with the block-diffusion ELBO. All processes of a multi-host run see every request (the harness is deterministic); each pass is split over
the mesh, each process feeds its share of it, and every process gets all results (process 0 reports).
"""
from __future__ import annotations

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llada_jax.inference import likelihood
from llada_jax.inference import sampling
from llada_jax.eval import requests as req_lib
from llada_jax.eval.progress import Progress
from llada_jax.eval.settings import EvalSettings, parse_value

HARNESS_ARGS = ("batch_size", "max_batch_size", "device")  # lm_eval passes these to every model; unused here
PROMPT_BUCKET = 32  # prompt widths are rounded up to this, so decoding compiles once per bucket


@register_model("llada_jax")
class LladaJaxLM(LM):
    """lm_eval model: `--model=llada_jax --model_args=checkpoint=DIR,cfg_scale=0.5,mc_num=128,...`."""

    def __init__(self, checkpoint: str, mesh_overrides=(), **settings):
        super().__init__()
        from llada_jax.inference.loader import InferenceModel

        given = {k: parse_value(k, v) for k, v in settings.items() if k not in HARNESS_ARGS}
        self.settings = EvalSettings(**given).check()
        model = InferenceModel(checkpoint, list(mesh_overrides)).load(param_dtype=None)  # params as stored
        self.mesh, self.graphdef, self.params, self.config = model.mesh, model.graphdef, model.params, model.config
        self.vocab, self.max_len, self.mask_id = model.vocab, model.max_len, model.mask_id
        self.block_size = model.block_size  # a block-diffusion model: decoded and scored block by block
        # lm-eval's rank stays 0 on every process: with rank r it would drop the first r documents (it shards
        # documents by rank), while here every process must see every request to feed its share of each pass.
        self.process_index = jax.process_index()  # only process 0 prints progress and writes results

    def _progress(self, label, total, n_requests):
        return Progress(label, total, n_requests, enabled=self.process_index == 0)

    # --- loglikelihood ----------------------------------------------------------------------------------------

    def _check_length(self, prompt, answer, what):
        from llada_jax.config import ConfigError

        if len(prompt) + len(answer) > self.max_len:
            raise ConfigError(f"a {what} request has {len(prompt) + len(answer)} tokens, more than the model's "
                              f"max_seq_len={self.max_len}; lower --num-fewshot or evaluate a longer-context model")

    def score_pairs(self, pairs, contexts, label):
        """[(log-likelihood, stderr)] of (prompt ids, answer ids) pairs keyed by their context strings."""
        s = self.settings
        progress = self._progress(label, len(pairs), len(pairs))
        return likelihood.batched_log_likelihoods(
            self.graphdef, self.params, pairs, req_lib.request_keys(contexts, s.seed), mask_id=self.mask_id,
            mc_num=s.mc_num, batch_size=s.mc_batch_size, cfg_scale=s.cfg_scale, estimator=s.estimator,
            rows_per_pass=s.rows_per_pass, mesh=self.mesh, progress=progress.update, block_size=self.block_size)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        pairs, contexts = [], []
        for request in requests:
            context, continuation = request.args[:2]
            prompt, answer = req_lib.encode_pair(self.vocab, context, continuation)
            self._check_length(prompt, answer, "loglikelihood")
            pairs.append((prompt, answer))
            contexts.append(context)
        scored = [i for i, (_, a) in enumerate(pairs) if a]
        values = self.score_pairs([pairs[i] for i in scored], [contexts[i] for i in scored], "loglikelihood")
        lls = [0.0] * len(pairs)
        for i, (ll, _) in zip(scored, values):
            lls[i] = ll
        greedy = self.greedy_matches(pairs) if self.settings.check_greedy else [False] * len(pairs)
        return [(ll, bool(g)) for ll, g in zip(lls, greedy)]

    def greedy_matches(self, pairs):
        """Whether revealing the answer span one most-confident token at a time reproduces it (the official
        suffix_greedy_prediction), decoded in batches of equal answer length."""
        out = [False] * len(pairs)
        by_length: dict[int, list[int]] = {}
        for i, (_, answer) in enumerate(pairs):
            if answer:
                by_length.setdefault(len(answer), []).append(i)
        for length, indices in sorted(by_length.items()):
            prompts = [pairs[i][0] for i in indices]
            decoded = self.decode_batches(prompts, length, length, length, temperature=0.0,
                                          remasking="low_confidence", threshold=None, factor=None, cache="auto",
                                          eos=False)
            for i, tokens in zip(indices, decoded):
                out[i] = list(tokens) == list(pairs[i][1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        texts = [request.args[0] for request in requests]
        pairs, contexts, owner = [], [], []
        for n, text in enumerate(texts):
            for w, window in enumerate(req_lib.rolling_windows(self.vocab.encode(text), self.max_len)):
                pairs.append(([], window))
                contexts.append(f"{n}:{w}:{text}")
                owner.append(n)
        totals = [0.0] * len(texts)
        for n, (ll, _) in zip(owner, self.score_pairs(pairs, contexts, "loglikelihood_rolling")):
            totals[n] += ll
        return totals

    # --- generate_until ---------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Decodes each request for its task's length (its max_gen_toks) unless --gen-length says otherwise,
        requests of one length together, and cuts the text at the task's stop strings."""
        s = self.settings
        prompts, stops, groups = [], [], {}
        for n, request in enumerate(requests):
            context, gen_kwargs = request.args[:2]
            gen_kwargs = gen_kwargs or {}
            until = gen_kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            schedule = self._schedule(gen_kwargs.get("max_gen_toks"))
            prompts.append(self.vocab.encode(context)[-(self.max_len - schedule[0]):])
            groups.setdefault(schedule, []).append(n)
        texts = [""] * len(requests)
        for (length, steps, block_length), members in groups.items():
            decoded = self.decode_batches([prompts[n] for n in members], length, steps, block_length,
                                          temperature=s.temperature, remasking=s.remasking, threshold=s.threshold,
                                          factor=s.factor, cache=s.cache, eos=True, label="generate_until")
            for n, tokens in zip(members, decoded):
                texts[n] = req_lib.cut_at_stops(self.vocab.decode(tokens), stops[n])
        return texts

    def _schedule(self, max_gen_toks) -> tuple[int, int, int]:
        """(gen_length, steps, block_length) for a request whose task asks for `max_gen_toks` new tokens."""
        from llada_jax.config import ConfigError

        task_length = max_gen_toks if isinstance(max_gen_toks, int) and max_gen_toks > 0 else None
        length, steps, block_length = self.settings.schedule(task_length)
        if length >= self.max_len:
            source = (f"gen_length={length}" if self.settings.gen_length else
                      f"the task's max_gen_toks={length}" if task_length else f"the default gen_length={length}")
            raise ConfigError(f"{source} leaves no room for a prompt in the model's max_seq_len={self.max_len}; "
                              "pass a smaller --gen-length")
        return length, steps, block_length

    def decode_batches(self, prompts, gen_length, steps, block_length, *, temperature, remasking, threshold,
                       factor, cache, eos, label=None):
        """Generated ids (cropped at EOS when `eos`) for each prompt, decoded gen_batch_size at a time,
        prompts sorted by length so a batch shares its padded width."""
        s = self.settings
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_batch = -(-s.gen_batch_size // self._batch_multiple()) * self._batch_multiple()
        progress = self._progress(label, len(prompts), len(prompts)) if label else None
        out = [None] * len(prompts)
        eos_id = self.vocab.eos_id if eos else None
        for start in range(0, len(order), per_batch):
            chunk = order[start:start + per_batch]
            batch = [prompts[i] for i in chunk] + [prompts[chunk[0]]] * (per_batch - len(chunk))
            width = -(-max(len(p) for p in batch) // PROMPT_BUCKET) * PROMPT_BUCKET
            width = min(width, self.max_len - gen_length)
            ids, valid = sampling.left_pad(batch, self.vocab.pad_id)
            ids, valid = _widen(np.asarray(ids), np.asarray(valid), width, self.vocab.pad_id)
            tokens = self._generate(ids, valid, gen_length=gen_length, steps=steps, block_length=block_length,
                                    temperature=temperature, remasking=remasking, threshold=threshold, factor=factor,
                                    cache=cache, eos_id=eos_id)
            for i, row in zip(chunk, tokens):
                generated = row[ids.shape[1]:]
                out[i] = sampling.crop_at_eos(generated, eos_id) if eos else [int(t) for t in generated]
            if progress:
                progress.update(min(start + per_batch, len(order)))
        return out

    def _batch_multiple(self) -> int:
        return likelihood.batch_multiple(self.mesh)

    def _generate(self, ids, valid, **decoding):
        """sampling.generate on this process's share of the rows; every process gets all rows back."""
        from jax.experimental import multihost_utils

        from llada_jax import sharding

        share = ids.shape[0] // jax.process_count()
        start = jax.process_index() * share
        local = {"ids": ids[start:start + share], "valid": valid[start:start + share]}
        if self.block_size is not None:  # decoded with the model's own block size, block by block
            decoding = dict(decoding, block_length=self.block_size, block_diffusion=True)
        with jax.set_mesh(self.mesh):
            batch = sharding.global_batch(local, self.mesh)
            tokens, _, _ = sampling.generate(
                self.graphdef, self.params, batch["ids"], batch["valid"], jax.random.key(self.settings.seed),
                cfg_scale=self.settings.cfg_scale, mask_id=self.mask_id, **decoding)
        return np.asarray(multihost_utils.process_allgather(tokens, tiled=True))


def _widen(ids: np.ndarray, valid: np.ndarray, width: int, pad_id: int):
    """Left-pad [B, P] prompts to `width` columns (P <= width), so batches of similar prompts share a shape."""
    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, valid
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id),
            np.pad(valid, ((0, 0), (extra, 0)), constant_values=False))
