"""Small tasks with checkable answers, generated here: measure a sampler's accuracy without hub weights.

Each example is a short prompt (e.g. "482+39=") and the one right answer ("521"), scored by exact match.
The tasks are small enough that a few-million-parameter byte-level model learns them on a CPU in minutes,
so a sampler mode that reveals several tokens per step can be compared with one-token-per-step decoding
on accuracy, not just speed:
- addition: two numbers of 1..`size` digits -> their sum;
- reversal: a string of `size` lowercase letters -> the same letters reversed;
- sorting: `size` digits -> the digits in ascending order;
- repetition: `size` lowercase letters -> the same letters REPEATS (8) times over: an answer 8x the prompt's
  length (size 32: 256 tokens), the long generations a block sampler's cache is measured on, learnable on a CPU.

Everything is plain Python text (pure functions of a seed), so any vocabulary can encode it; `encode`
turns examples into fixed-width token arrays for training (answer padded with EOS, as LLaDA's SFT does).
"""
from __future__ import annotations

import dataclasses
import random
import string

import numpy as np

TASKS = ("addition", "reversal", "sorting", "repetition")
REPEATS = 8  # copies of the letters in a repetition answer


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _addition(rng: random.Random, size: int) -> Example:
    a, b = (rng.randrange(10 ** rng.randint(1, size)) for _ in range(2))
    return Example(f"{a}+{b}=", str(a + b))


def _reversal(rng: random.Random, size: int) -> Example:
    text = "".join(rng.choice(string.ascii_lowercase) for _ in range(size))
    return Example(f"rev {text}=", text[::-1])


def _sorting(rng: random.Random, size: int) -> Example:
    digits = "".join(rng.choice(string.digits) for _ in range(size))
    return Example(f"sort {digits}=", "".join(sorted(digits)))


def _repetition(rng: random.Random, size: int) -> Example:
    text = "".join(rng.choice(string.ascii_lowercase) for _ in range(size))
    return Example(f"rep {text}=", text * REPEATS)


_MAKERS = {"addition": _addition, "reversal": _reversal, "sorting": _sorting, "repetition": _repetition}


def check_task(task: str, size: int) -> None:
    from llada_jax.config import ConfigError

    if task not in _MAKERS:
        raise ConfigError(f"task={task!r} is unknown; use one of {', '.join(TASKS)}")
    if size <= 0:
        raise ConfigError(f"size={size} must be positive (digits or letters per example)")


def examples(task: str, count: int, seed: int, size: int = 3) -> list[Example]:
    """`count` examples of `task`, the same for the same seed."""
    check_task(task, size)
    rng = random.Random(f"{task}/{size}/{seed}")
    return [_MAKERS[task](rng, size) for _ in range(count)]


def train_test_split(task: str, n_train: int, n_test: int, seed: int = 0, size: int = 3):
    """(train, test) with no test prompt among the train prompts: accuracy measures generalisation.

    Test examples are drawn first from their own stream; train examples skip any prompt that is in the test set.
    """
    test = examples(task, n_test, seed=2 * seed + 1, size=size)
    held_out = {e.prompt for e in test}
    rng = random.Random(f"{task}/{size}/train/{seed}")
    train = []
    for _ in range(100 * n_train + 1000):
        if len(train) == n_train:
            break
        example = _MAKERS[task](rng, size)
        if example.prompt not in held_out:
            train.append(example)
    return train, test


def answer_width(task: str, size: int) -> int:
    """The longest possible answer in characters (the generation length a sampler needs, before EOS)."""
    check_task(task, size)
    return {"addition": size + 1, "repetition": REPEATS * size}.get(task, size)


def exact_match(predictions: list[str], reference: list[Example]) -> float:
    """Fraction of predictions equal to the reference answer (surrounding whitespace ignored)."""
    if len(predictions) != len(reference):
        raise ValueError(f"{len(predictions)} predictions for {len(reference)} examples")
    hits = sum(p.strip() == e.answer for p, e in zip(predictions, reference))
    return hits / max(len(reference), 1)


def encode(batch: list[Example], vocab, prompt_width: int, answer_width: int):
    """(tokens [N, prompt_width + answer_width] int32, prompt_valid [N, prompt_width] bool).

    Prompts are left-padded with pad_id so every answer starts in the same column (the sampler's layout);
    answers are right-padded with EOS, so the model learns to end its answer.
    """
    from llada_jax.config import ConfigError

    tokens = np.full((len(batch), prompt_width + answer_width), vocab.eos_id, np.int32)
    valid = np.zeros((len(batch), prompt_width), bool)
    for row, example in enumerate(batch):
        prompt, answer = vocab.encode(example.prompt), vocab.encode(example.answer)
        if len(prompt) > prompt_width or len(answer) > answer_width:
            raise ConfigError(f"example {example.prompt!r} does not fit prompt_width={prompt_width} / "
                              f"answer_width={answer_width}; raise them")
        tokens[row, :prompt_width - len(prompt)] = vocab.pad_id
        tokens[row, prompt_width - len(prompt):prompt_width] = prompt
        valid[row, prompt_width - len(prompt):] = True
        tokens[row, prompt_width:prompt_width + len(answer)] = answer
    return tokens, valid
