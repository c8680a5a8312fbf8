"""A fingerprint of a seqio Task's or Mixture's definition, for `prepare`'s manifest.

A seqio source has no input files to hash, so what identifies its data is the definition: the data source,
the preprocessors, the output features and (for a Mixture) the member tasks and their rates. The description
is built from values only, never from memory addresses, so it is the same in every process that registers
the same definition and changes when any part of it does: a function is described by its module, name,
bytecode, constants, defaults, closure and the plain-data globals it reads (so editing a lambda or the list it
returns changes the fingerprint). Vocabularies are described by type and size (the tokenizer itself is
checked separately against the manifest).
"""
from __future__ import annotations

import functools
import hashlib
import json
import types

_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 8
# Task attributes that are bookkeeping, not definition (caches, statistics, metrics).
_TASK_FIELDS = ("name", "source", "preprocessors", "output_features", "shuffle_buffer_size")


def task_sha256(name: str) -> str:
    """SHA-256 of the stable description of the registered seqio Task or Mixture `name`."""
    from llada_jax.data.sources import seqio_task

    described = _describe_task(seqio_task(name))
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _describe_task(task):
    if hasattr(task, "tasks") and hasattr(task, "get_rate"):  # a Mixture
        return {"mixture": task.name, "tasks": [[_describe_task(t), float(task.get_rate(t))] for t in task.tasks]}
    return {field: _stable(getattr(task, field, None), set(), 0) for field in _TASK_FIELDS}


def _stable(obj, seen: set, depth: int):
    """A JSON-able description of obj with no addresses in it."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, bytes):
        return {"bytes_sha256": hashlib.sha256(obj).hexdigest()}
    if depth > _MAX_DEPTH or id(obj) in seen:
        return _name_of(obj)
    seen = seen | {id(obj)}
    if isinstance(obj, (list, tuple)):
        return [_stable(x, seen, depth + 1) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_stable(x, seen, depth + 1) for x in obj), key=repr)
    if isinstance(obj, dict):
        return {str(k): _stable(v, seen, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, functools.partial):
        return {"partial": _stable(obj.func, seen, depth + 1), "args": _stable(obj.args, seen, depth + 1),
                "keywords": _stable(obj.keywords, seen, depth + 1)}
    if isinstance(obj, types.FunctionType):
        return _function(obj, seen, depth)
    if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
        return _name_of(obj)
    if hasattr(obj, "vocab_size") and hasattr(obj, "encode"):  # a seqio Vocabulary
        return {"vocabulary": _name_of(type(obj)), "vocab_size": int(obj.vocab_size),
                "extra_ids": int(getattr(obj, "extra_ids", 0) or 0)}
    text = repr(obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, types.MethodType):
        described = {"type": _name_of(type(obj)), "attrs": _stable(vars(obj), seen, depth + 1)}
        return described if " at 0x" in text else dict(described, repr=text)  # e.g. tf.int32
    return _name_of(obj) if " at 0x" in text else text


def _function(fn, seen: set, depth: int):
    closure = [c.cell_contents for c in fn.__closure__ or () if _cell_filled(c)]
    return {"function": _name_of(fn), "code": _code_sha256(fn.__code__),
            "defaults": _stable(fn.__defaults__, seen, depth + 1),
            "closure": _stable(closure, seen, depth + 1),
            "globals": {n: _global(fn.__globals__[n], fn, seen, depth) for n in sorted(_global_names(fn.__code__))
                        if n in fn.__globals__}}


def _global(value, fn, seen: set, depth: int):
    """A global the function reads: plain data and helpers of its own module in full, anything else by name."""
    data = isinstance(value, (*_PLAIN, bytes, list, tuple, dict, set, frozenset))
    helper = isinstance(value, types.FunctionType) and value.__module__ == fn.__module__
    return _stable(value, seen, depth + 1) if data or helper else _name_of(value)


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _code_sha256(code) -> str:
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        digest.update((_code_sha256(const) if isinstance(const, types.CodeType) else repr(const)).encode())
    digest.update(repr(code.co_names).encode())
    return digest.hexdigest()


def _global_names(code) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _name_of(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{getattr(obj, '__module__', '') or ''}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
