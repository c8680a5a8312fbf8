"""Chat templates: a conversation -> (prompt ids, response ids) for SFT.

The prompt is every turn before the last assistant turn, rendered by the template and ending with the
assistant header; the response is the last assistant turn's text. The pipeline appends EOS padding (which
counts as response, per the LLaDA SFT recipe), so no end-of-turn token is added here.

Templates (data.chat_template):
- "plain": "User: ...\\n\\nAssistant: ..." in plain text, for vocabularies without chat tokens (byte).
- "llada": the official LLaDA / LLaMA-3 format,
  `<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`.
- "task": the user's text as it is ("482+39="), for the generated tasks of `llada-jax demo`.
- "auto": "llada" for the hf tokenizer, "plain" otherwise.
Add your own by putting a function in TEMPLATES from a module imported with --import-module.
"""
from __future__ import annotations

from typing import Callable

from llada_jax.config import ConfigError


def plain(messages: list[dict], with_bos: bool) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    parts = [f"{names.get(m['role'], m['role'].title())}: {m['content']}\n\n" for m in messages]
    return "".join(parts) + "Assistant: "


def llada(messages: list[dict], with_bos: bool) -> str:
    parts = ["<|startoftext|>" if with_bos else ""]
    for m in messages:
        parts.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def bare_prompt(messages: list[dict], with_bos: bool) -> str:
    """The user's text as it is: generated tasks need no "User:/Assistant:" framing."""
    return "".join(m["content"] for m in messages if m["role"] != "assistant")


TEMPLATES: dict[str, Callable[[list[dict], bool], str]] = {"plain": plain, "llada": llada, "task": bare_prompt}


def resolve(name: str, vocab) -> str:
    if name == "auto":
        return "llada" if vocab.name == "hf" else "plain"
    if name not in TEMPLATES:
        raise ConfigError(f"data.chat_template={name!r} is unknown; use 'auto' or one of {sorted(TEMPLATES)}")
    if name == "llada" and vocab.name != "hf":
        raise ConfigError("data.chat_template='llada' needs the official LLaDA tokenizer (data.tokenizer='hf'); "
                          "use 'plain' with other vocabularies")
    return name


def encode_example(example: dict, vocab, template: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the prompt renders all turns before the last assistant turn."""
    msgs = example["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt = TEMPLATES[template](msgs[:last], getattr(vocab, "bos_id", None) is not None)
    return vocab.encode(prompt), vocab.encode(msgs[last]["content"])
