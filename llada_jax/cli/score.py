"""Score answers by Monte Carlo log-likelihood: `llada-jax score --checkpoint=DIR --input=FILE.jsonl`.

Each JSONL line is {"prompt": ..., "answer": ...} (prints log p(answer | prompt)) or {"prompt": ...,
"choices": [...], "label": i} (picks the choice with the highest estimate; accuracy when labels are given).
Output: one JSON object per input line, then {"accuracy": ...} when any line had a label.
A block-diffusion checkpoint is scored with the block-diffusion ELBO (inference/block_likelihood.py).
Items are scored in groups that share forward passes (each answer's distinct maskings scored once); the
estimates equal scoring one answer at a time with the same random numbers.
"""
from __future__ import annotations

import argparse
import json

ITEMS_PER_CALL = 32  # items scored together: enough rows to fill passes, output still streams


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="params export, run workdir or checkpoint step")
    parser.add_argument("--input", required=True,
                        help="JSONL file: one {prompt, answer} or {prompt, choices, label} object per line")
    parser.add_argument("--mc-num", type=int, default=128, help="Monte Carlo samples per answer")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (mini-batch)")
    parser.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale")
    parser.add_argument("--estimator", choices=["unbiased", "official"], default="unbiased",
                        help="stratified rounding: unbiased, or half-to-even as the official get_log_likelihood.py")
    parser.add_argument("--rows-per-pass", type=int, default=None,
                        help="Monte Carlo rows of several items scored in one forward pass "
                             "(default: 32 on CPU, 256 on GPU/TPU)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the Monte Carlo masks")
    parser.add_argument("--param-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="cast params once at load (auto: bfloat16 on GPU/TPU, as stored on CPU)")


def _check_item(item, where: str) -> None:
    from llada_jax.config import ConfigError

    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise ConfigError(f"{where} needs a \"prompt\" string; write {{\"prompt\": ..., \"answer\": ...}}")
    if "choices" in item:
        choices = item["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise ConfigError(f"{where} has \"choices\" that is not a non-empty list of non-empty strings")
        label = item.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)
                                  or not 0 <= label < len(choices)):
            raise ConfigError(f"{where} has \"label\": {label!r}; "
                              f"give an index into \"choices\" (0..{len(choices) - 1})")
    elif not isinstance(item.get("answer"), str) or not item["answer"]:
        raise ConfigError(f"{where} needs \"prompt\" and either a non-empty \"answer\" string or a \"choices\" list")


def read_items(path: str) -> list[dict]:
    """The JSONL items, each checked; any problem is one sentence naming the line."""
    from llada_jax.config import ConfigError
    from llada_jax.utils.input_files import read_text

    lines = read_text(path, flag="--input", what="a JSONL file with one item per line").split("\n")
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path} line {n} is not valid JSON; write one JSON object per line") from None
        _check_item(item, f"{path} line {n}")
        items.append(item)
    if not items:
        raise ConfigError(f"{path} holds no items; write one JSON object per line")
    return items


def encode_items(items: list[dict], vocab, max_len: int) -> list[tuple]:
    """(prompt ids, [answer ids]) per item; an item longer than the model's context is one sentence."""
    from llada_jax.config import ConfigError

    encoded = []
    for n, item in enumerate(items, 1):
        prompt = vocab.encode(item["prompt"])
        answers = [vocab.encode(a) for a in item.get("choices", [item.get("answer")])]
        longest = len(prompt) + max(len(a) for a in answers)
        if longest > max_len:
            raise ConfigError(f"item {n} has {longest} prompt + answer tokens, more than the model's "
                              f"max_seq_len={max_len}; shorten it")
        encoded.append((prompt, answers))
    return encoded


def run(args, overrides) -> int:
    from llada_jax.checkpoints import locate
    from llada_jax.config import ConfigError

    bad_rows = args.rows_per_pass is not None and args.rows_per_pass <= 0
    if args.mc_num <= 0 or args.batch_size <= 0 or bad_rows or args.cfg_scale < 0:
        raise ConfigError("--mc-num, --batch-size and --rows-per-pass must be positive and --cfg-scale >= 0")
    locate.resolve(args.checkpoint)  # flag mistakes are said at once, before JAX loads
    items = read_items(args.input)
    import jax
    import numpy as np

    from llada_jax.inference import likelihood
    from llada_jax.inference.loader import InferenceModel
    from llada_jax.utils.progress import Progress, fmt_time, stderr

    model = InferenceModel(args.checkpoint, overrides)
    encoded = encode_items(items, model.vocab, model.max_len)
    model.load(args.param_dtype)  # cast once, not per forward pass
    if model.attention_note:
        stderr(f"score: {model.attention_note}")
    graphdef, params, config, mesh = model.graphdef, model.params, model.config, model.mesh
    key = jax.random.key(args.seed)
    correct = labelled = 0
    progress = Progress(len(items))
    if model.block_size is not None:
        stderr(f"score: block-diffusion model: the block-diffusion ELBO with block {model.block_size}")
    stderr(f"score: {len(items)} items x {args.mc_num} samples (the first passes compile) ...")
    for start in range(0, len(items), ITEMS_PER_CALL):
        part = range(start, min(start + ITEMS_PER_CALL, len(items)))
        # one key per item: its choices share their random numbers, so their comparison is less noisy
        pairs = [(encoded[n][0], a) for n in part for a in encoded[n][1]]
        key_data = np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(key, n)))
                             for n in part for _ in encoded[n][1]])
        scored = iter(likelihood.batched_log_likelihoods(
            graphdef, params, pairs, key_data, mask_id=config.model.mask_token_id, mc_num=args.mc_num,
            batch_size=args.batch_size, cfg_scale=args.cfg_scale, estimator=args.estimator,
            rows_per_pass=args.rows_per_pass, mesh=mesh, block_size=model.block_size))
        for n in part:
            item, scores = items[n], [next(scored) for _ in encoded[n][1]]
            record = {"item": n + 1, "log_likelihood": [round(s, 4) for s, _ in scores],
                      "stderr": [round(e, 4) for _, e in scores]}
            if "choices" in item:
                record["pick"] = max(range(len(scores)), key=lambda i: scores[i][0])
                if item.get("label") is not None:
                    labelled += 1
                    record["correct"] = record["pick"] == item["label"]
                    correct += int(record["correct"])
            print(json.dumps(record), flush=True)
        done = part.stop
        if progress.due(done) or done == len(items):
            stderr(f"score: item {done}/{len(items)} | {fmt_time(progress.elapsed())} elapsed | ETA {progress.eta()}")
    if labelled:
        print(json.dumps({"accuracy": correct / labelled, "labelled": labelled}))
    return 0
