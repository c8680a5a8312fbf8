"""Pure helpers that turn harness request strings into token work and generated tokens back into answers."""
from __future__ import annotations

import zlib

import numpy as np


def encode_pair(vocab, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) the way the official harness class splits them.

    Trailing spaces of the context move to the continuation (so " Paris" is scored as one answer), and the
    answer is the tail of encode(context + continuation) after encode(context): tokenizers that merge across
    the boundary still score the text the prompt would be continued with.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = vocab.encode(context + continuation)
    prompt = vocab.encode(context)
    return prompt, whole[len(prompt):]


def request_keys(contexts: list[str], seed: int) -> np.ndarray:
    """[N, 2] uint32 threefry key data, one per request, from (seed, CRC32 of its context).

    Keyed by context, not by position: the choices of one question share their random masks (their
    comparison is less noisy), and the numbers do not depend on request order or on how hosts split them.
    """
    out = np.empty((len(contexts), 2), np.uint32)
    for n, context in enumerate(contexts):
        out[n] = (seed & 0xFFFFFFFF, zlib.crc32(context.encode("utf-8")))
    return out


def cut_at_stops(text: str, stops: list[str]) -> str:
    """Text before the first occurrence of any stop sequence (the harness's `until`)."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found >= 0:
                cut = min(cut, found)
    return text[:cut]


def rolling_windows(tokens: list[int], window: int) -> list[list[int]]:
    """Consecutive chunks of at most `window` tokens covering the text (each scored by its own ELBO)."""
    return [tokens[i:i + window] for i in range(0, len(tokens), window)]
