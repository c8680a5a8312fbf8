"""The first-run demo: train on a task this project generates, then solve held-out problems with the sampler.

A newcomer should see the model learn something in minutes on a CPU. Text completions of a few-million-
parameter model are not convincing; exact answers to problems it never saw are: `llada-jax demo` writes
`synthetic_tasks` examples as SFT conversations, trains with the usual loop, and decodes the held-out
prompts with LLaDA's reverse process, printing some solved examples and the exact-match accuracy.

The prompts are trained without a chat wrapper: the "task" template (data/chat.py) is the bare prompt text.
"""
from __future__ import annotations

import collections
import json
import os

from llada_jax.data import synthetic_tasks

TEMPLATE = "task"  # data/chat.py's bare-prompt template: the demo needs no "User:/Assistant:" framing


def write_sft_jsonl(path: str, examples) -> str:
    """Writes {"prompt", "response"} lines; an identical file is left alone, so its prepared cache is reused."""
    text = "".join(json.dumps({"prompt": e.prompt, "response": e.answer}) + "\n" for e in examples)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def gen_length_for(seq_len: int, longest_prompt: int, block: int = 4) -> int:
    """The answer region the model was trained with (seq_len minus the prompt), rounded down to whole blocks."""
    room = seq_len - longest_prompt
    if room < block:
        from llada_jax.config import ConfigError

        raise ConfigError(f"train.seq_len={seq_len} leaves {room} tokens after a {longest_prompt}-token prompt; "
                          "raise train.seq_len")
    return room - room % block


def solve(graphdef, params, mesh, vocab, prompts: list[str], *, seq_len: int, mask_id: int, seed: int = 0,
          block_size: int | None = None, **sampler) -> list[str]:
    """Greedy low-confidence decoding (one token per step) of every prompt over the rest of the row (seq_len minus
    the longest prompt); the text up to the first EOS. The decoder is `llada-jax sample`'s: LLaDA's over one
    block, or, with a `block_size` (a block-diffusion model), block by block with an exact cache of finished
    blocks (inference/block_sampling.py), whose answer need not fill whole blocks."""
    import jax

    from llada_jax.inference import sampling

    encoded = [vocab.encode(p) for p in prompts]
    gen_length = gen_length_for(seq_len, max(len(e) for e in encoded), block=1 if block_size else 4)
    blocks = {"block_length": block_size, "block_diffusion": True} if block_size else {"block_length": gen_length}
    settings = {"steps": gen_length, **blocks, **sampler}
    ids, valid = sampling.left_pad(encoded, vocab.pad_id)
    with jax.set_mesh(mesh):
        out, _, _ = sampling.generate(graphdef, params, ids, valid, jax.random.key(seed), gen_length=gen_length,
                                      mask_id=mask_id, eos_id=vocab.eos_id, **settings)
    rows = jax.device_get(out)[:, ids.shape[1]:]
    return [vocab.decode(sampling.crop_at_eos(row, vocab.eos_id)) for row in rows]


def prompt_blind_accuracy(train, test) -> float:
    """The baseline: answering every held-out problem with the most common training answer."""
    answers = collections.Counter(e.answer for e in train)
    guess = answers.most_common(1)[0][0]
    return sum(e.answer == guess for e in test) / len(test)


def report(examples, predictions: list[str], shown: int, baseline: float) -> list[str]:
    """Lines a person reads: a few held-out problems with the model's answer, then the accuracy."""
    lines = []
    for e, p in list(zip(examples, predictions))[:shown]:
        mark = "ok" if p.strip() == e.answer else f"wrong (expected {e.answer})"
        lines.append(f"  {e.prompt}{p.strip():<8} {mark}")
    accuracy = synthetic_tasks.exact_match(predictions, examples)
    hits = round(accuracy * len(examples))
    lines.append(f"held-out accuracy: {hits}/{len(examples)} = {accuracy:.1%} exact match on problems never seen "
                 f"in training (answering without reading the prompt: {baseline:.1%})")
    return lines
