"""Score answers by Monte Carlo log-likelihood: `llada-jax score --checkpoint=DIR --input=FILE.jsonl`.

Each JSONL line is {"prompt": ..., "answer": ...} (prints log p(answer | prompt)) or {"prompt": ...,
"choices": [...], "label": i} (picks the choice with the highest estimate; accuracy when labels are given).
"""
from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="JSONL with prompt and answer, or prompt and choices")
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)


def read_items(path: str) -> list[dict]:
    from llada_jax.config import ConfigError

    items = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise ConfigError(f"--input={path} does not exist") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path} line {n} is not valid JSON") from None
        if "prompt" not in item or not ("answer" in item or item.get("choices")):
            raise ConfigError(f"{path} line {n} needs \"prompt\" and either \"answer\" or a non-empty \"choices\" list")
        items.append(item)
    if not items:
        raise ConfigError(f"{path} holds no items; write one JSON object per line")
    return items


def run(args, overrides) -> int:
    import jax

    from llada_jax import checkpoint, likelihood
    from llada_jax.data.vocab import get_vocabulary

    items = read_items(args.input)
    graphdef, params, config = checkpoint.load_model(args.checkpoint)
    vocab = get_vocabulary(config)
    key = jax.random.key(args.seed)
    correct = labelled = 0
    for n, item in enumerate(items):
        prompt = vocab.encode(item["prompt"])
        answers = item["choices"] if "choices" in item else [item["answer"]]
        scores = [likelihood.log_likelihood(graphdef, params, prompt, vocab.encode(a), jax.random.fold_in(key, n),
                                            mask_id=config.model.mask_token_id, mc_num=args.mc_num,
                                            batch_size=args.batch_size, cfg_scale=args.cfg_scale)
                  for a in answers]
        record = {"line": n + 1, "log_likelihood": [s for s, _ in scores], "stderr": [e for _, e in scores]}
        if "choices" in item:
            record["pick"] = max(range(len(scores)), key=lambda i: scores[i][0])
            if "label" in item:
                labelled += 1
                correct += int(record["pick"] == int(item["label"]))
        print(json.dumps(record))
    if labelled:
        print(json.dumps({"accuracy": correct / labelled, "labelled": labelled}))
    return 0
