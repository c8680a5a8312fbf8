"""Vocabularies: text <-> token ids, plus the special ids the diffusion process needs (mask, EOS, pad).

`ByteVocabulary` needs no tokenizer file: ids 0/1/2 are pad/EOS/unk and byte b is id b + 3 (the same layout
as seqio.ByteVocabulary), and the mask token takes the first id after the 259 byte-level ids.
"""
from __future__ import annotations

from typing import Sequence

from llada_jax.config import ConfigError


class ByteVocabulary:
    pad_id = 0
    eos_id = 1
    unk_id = 2
    offset = 3
    mask_id = 259
    size = 260  # ids in use; a model's vocab_size may be larger (padded for sharding)

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes for byte ids; the special ids are dropped except mask, shown as '_' so partial samples read well."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if self.offset <= i < self.offset + 256:
                out.append(i - self.offset)
            elif i == self.mask_id:
                out += b"_"
        return out.decode("utf-8", errors="replace")


def get_vocabulary(config):
    """The vocabulary named by config.data.tokenizer, checked against the model's special ids and size."""
    name = config.data.get("tokenizer", "byte")
    if name != "byte":
        raise ConfigError(f"data.tokenizer={name!r} is not supported yet; use 'byte'")
    vocab = ByteVocabulary()
    m = config.model
    if vocab.size > m.vocab_size:
        raise ConfigError(
            f"the byte vocabulary needs {vocab.size} ids but model.vocab_size={m.vocab_size}; raise model.vocab_size"
        )
    for name, want in (("mask_token_id", vocab.mask_id), ("eos_token_id", vocab.eos_id), ("pad_token_id", vocab.pad_id)):
        if m[name] != want:
            raise ConfigError(f"model.{name}={m[name]} but the byte vocabulary uses {want}; set --config.model.{name}={want}")
    return vocab
