"""Vocabularies: text <-> token ids, plus the special ids the diffusion process needs (mask, EOS, pad).

Three kinds, one interface (`encode`, `decode`, `mask_id`, `eos_id`, `pad_id`, `size`, `name`, `identity`):
- `ByteVocabulary` (data.tokenizer="byte", the default): no tokenizer file. Ids 0/1/2 are pad/EOS/unk and byte
  b is id b + 3, exactly seqio.ByteVocabulary's layout; the mask token takes the next id, 259. Pure Python,
  so the default path never imports seqio (which imports TensorFlow, several seconds).
- `SentencePieceVocabulary` (data.tokenizer="sentencepiece"): a seqio.SentencePieceVocabulary over a .model
  file (e.g. one trained by `llada-jax prepare --train-tokenizer`); the mask token is the first id after it.
- `HFVocabulary` (data.tokenizer="hf"): a Hugging Face `tokenizer.json` read with the `tokenizers` package,
  for the official LLaDA tokenizer (mask `<|mdm_mask|>` = 126336, EOS `<|endoftext|>` = 126081).

`identity` is what a prepared dataset's manifest records, so data tokenized with one vocabulary is never
read with another.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

from llada_jax.config import ConfigError
from llada_jax.data.records import file_sha256

TOKENIZERS = ("byte", "sentencepiece", "hf")


class ByteVocabulary:
    name = "byte"
    pad_id = 0
    eos_id = 1
    unk_id = 2
    offset = 3
    mask_id = 259
    size = 260  # ids in use; a model's vocab_size may be larger (padded for sharding)
    bos_id = None

    @property
    def identity(self) -> dict:
        return {"name": self.name, "sha256": hashlib.sha256(b"llada_jax byte vocabulary v1").hexdigest(),
                "size": self.size, "mask_id": self.mask_id, "eos_id": self.eos_id, "pad_id": self.pad_id}

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

    def seqio_vocabulary(self):
        """The equivalent seqio vocabulary (same ids), for seqio Tasks."""
        import seqio

        return seqio.ByteVocabulary()


class SentencePieceVocabulary:
    """A seqio.SentencePieceVocabulary; the mask token is appended after its last id."""

    name = "sentencepiece"
    bos_id = None

    def __init__(self, model_file: str):
        if not os.path.isfile(model_file):
            raise ConfigError(f"SentencePiece model {model_file!r} does not exist; set data.tokenizer_path to a "
                              ".model file (train one with `llada-jax prepare --train-tokenizer`)")
        import seqio  # lazy: imports TensorFlow

        self.path = model_file
        self._vocab = seqio.SentencePieceVocabulary(model_file)
        try:
            base = self._vocab.vocab_size
        except Exception as e:  # sentencepiece raises RuntimeError on a corrupt file
            raise ConfigError(f"{model_file} is not a readable SentencePiece model ({e}); retrain or re-download it") from None
        self.pad_id, self.eos_id, self.unk_id = self._vocab.pad_id, self._vocab.eos_id, self._vocab.unk_id
        if self.eos_id is None or self.eos_id < 0:
            raise ConfigError(f"SentencePiece model {model_file} has no EOS piece; train it with eos_id=1")
        self.mask_id = base
        self.size = base + 1

    @property
    def identity(self) -> dict:
        return {"name": self.name, "sha256": file_sha256(self.path), "size": self.size,
                "mask_id": self.mask_id, "eos_id": self.eos_id, "pad_id": self.pad_id}

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._vocab.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        keep = [int(i) for i in ids if int(i) < self.mask_id and int(i) not in (self.pad_id, self.eos_id)]
        return self._vocab.decode(keep)

    def seqio_vocabulary(self):
        return self._vocab


class HFVocabulary:
    """A Hugging Face `tokenizer.json` (e.g. the official LLaDA one), special ids looked up by token text."""

    name = "hf"

    def __init__(self, path: str, mask_token: str = "<|mdm_mask|>", eos_token: str = "<|endoftext|>",
                 pad_token: str | None = None, bos_token: str = "<|startoftext|>"):
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError(f"no tokenizer.json at {path!r}; set data.tokenizer_path to the folder of the "
                              "Hugging Face tokenizer (e.g. a local copy of GSAI-ML/LLaDA-8B-Instruct)")
        try:
            import tokenizers
        except ImportError:
            raise ConfigError("data.tokenizer='hf' needs the tokenizers package; pip install tokenizers") from None
        try:
            self._tok = tokenizers.Tokenizer.from_file(file)
        except Exception as e:
            raise ConfigError(f"{file} is not a readable tokenizer.json ({str(e).splitlines()[0]}); re-download it") from None
        self.path = file

        def lookup(token, role):
            i = self._tok.token_to_id(token)
            if i is None:
                raise ConfigError(f"{file} has no {role} token {token!r}; use the official LLaDA tokenizer or one "
                                  f"that defines {token!r}")
            return int(i)

        self.mask_id = lookup(mask_token, "mask")
        self.eos_id = lookup(eos_token, "EOS")
        self.pad_id = lookup(pad_token, "pad") if pad_token else self.eos_id
        self.bos_id = self._tok.token_to_id(bos_token)
        self.size = int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def identity(self) -> dict:
        return {"name": self.name, "sha256": file_sha256(self.path), "size": self.size,
                "mask_id": self.mask_id, "eos_id": self.eos_id, "pad_id": self.pad_id}

    def encode(self, text: str) -> list[int]:
        """Special tokens written in the text (chat headers) become their ids; no BOS/EOS is added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_vocabulary(name: str, path: str = ""):
    """The vocabulary `name` ("byte" | "sentencepiece" | "hf") from `path` where it needs a file."""
    if name == "byte":
        return ByteVocabulary()
    if name == "sentencepiece":
        return SentencePieceVocabulary(path)
    if name == "hf":
        return HFVocabulary(path)
    raise ConfigError(f"data.tokenizer={name!r} is unknown; use one of {TOKENIZERS}")


def check_against_model(vocab, model_cfg) -> None:
    """The model must have room for every id and agree on the special ids."""
    if vocab.size > model_cfg.vocab_size:
        raise ConfigError(
            f"the {vocab.name} vocabulary needs {vocab.size} ids but model.vocab_size={model_cfg.vocab_size}; "
            f"raise --config.model.vocab_size to at least {vocab.size}"
        )
    for field, want in (("mask_token_id", vocab.mask_id), ("eos_token_id", vocab.eos_id), ("pad_token_id", vocab.pad_id)):
        if model_cfg[field] != want:
            raise ConfigError(f"model.{field}={model_cfg[field]} but the {vocab.name} vocabulary uses {want}; "
                              f"set --config.model.{field}={want}")


def get_vocabulary(config):
    """The vocabulary named by config.data.tokenizer, checked against the model's special ids and size."""
    d = config.data
    vocab = load_vocabulary(d.get("tokenizer", "byte"), d.get("tokenizer_path", ""))
    check_against_model(vocab, config.model)
    return vocab


def train_sentencepiece(texts, model_prefix: str, vocab_size: int, model_type: str = "unigram") -> str:
    """Trains a SentencePiece model with seqio's id layout (pad 0, EOS 1, unk 2, no BOS); returns the .model path."""
    import sentencepiece as spm

    texts = iter(texts)
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=texts, model_prefix=model_prefix, vocab_size=vocab_size, model_type=model_type,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, byte_fallback=True,
            hard_vocab_limit=False, minloglevel=2,
        )
    except RuntimeError as e:
        raise ConfigError(f"SentencePiece training failed ({str(e).splitlines()[0]}); give more text or a smaller "
                          "--vocab-size") from None
    return model_prefix + ".model"
