"""SFT rows: a stored (prompt, response) record -> fixed-length "tokens", "prompt_mask" and "segment_ids".

The response is followed by EOS up to seq_len. "segment_ids" is 1 over the example itself (prompt, response
and its first EOS) and 0 after it: the train step widens every row to the longest example of its
micro-batch, so the EOS up to that length count as response (prompt_mask False) and teach the model where
to stop, as in LLaDA SFT, while the columns past it are padding that is neither seen nor scored. An example needs room for its prompt, its response and at least
one EOS; a longer one is cut at the end of the response ("truncate") or left out ("drop"). An example
whose prompt alone fills seq_len is always left out: it has nothing to learn from.
"""
from __future__ import annotations

import numpy as np

from llada_jax.config import ConfigError

OVERLONG = ("truncate", "drop")


def fits(prompt_len: int, total_len: int, seq_len: int, overlong: str) -> bool:
    """Whether an example makes a row under the over-long policy."""
    if total_len + 1 <= seq_len:
        return True
    return overlong == "truncate" and prompt_len < seq_len


def keep_record(raw: bytes, seq_len: int, overlong: str) -> bool:
    head = np.frombuffer(raw[:4], "<i4")[0]
    return fits(int(head), len(raw) // 4 - 1, seq_len, overlong)


def to_row(raw: bytes, seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    arr = np.frombuffer(raw, "<i4")
    prompt_len, ids = int(arr[0]), arr[1:1 + seq_len]
    tokens = np.full((seq_len,), eos_id, np.int32)
    tokens[: len(ids)] = ids
    prompt_mask = np.zeros((seq_len,), bool)
    prompt_mask[:prompt_len] = True
    segment_ids = np.zeros((seq_len,), np.int32)
    segment_ids[: min(len(ids) + 1, seq_len)] = 1
    return {"tokens": tokens, "prompt_mask": prompt_mask, "segment_ids": segment_ids}


def overlong_counts(lengths: np.ndarray, seq_len: int, overlong: str) -> dict[str, int]:
    """How many examples the policy truncates and drops, from the [n, 2] lengths the manifest keeps."""
    if overlong not in OVERLONG:
        raise ConfigError(f"data.sft_overlong={overlong!r} is unknown; use one of {OVERLONG}")
    if not len(lengths):
        return {"truncated": 0, "dropped": 0}
    prompt, total = lengths[:, 0], lengths[:, 1]
    long = total + 1 > seq_len
    dropped = long & ((prompt >= seq_len) | (overlong == "drop"))
    return {"truncated": int((long & ~dropped).sum()), "dropped": int(dropped.sum())}
