"""Traced programs kept on disk beside the compiled ones, so a repeated command skips tracing as well.

JAX's persistent compilation cache is keyed by the lowered program, so every run still traces and lowers the
decoder (about a second on CPU, as long as loading a small model) before it finds the compiled executable.
`load_or_export` keeps a `jax.export` of a jitted function under the compilation cache directory, keyed by
everything the trace depends on: the static options, the arguments' shapes, dtypes and shardings, the devices,
JAX's tracing settings, the versions of JAX, jaxlib and Flax, and the source of this package (so an edited or
upgraded llada_jax never runs a stale program). A later run with the same key deserializes it in milliseconds.
Same switch as the compilation cache: LLADA_JAX_COMPILATION_CACHE=off turns both off.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile

import jax

from llada_jax.utils import compile_cache

SUFFIX = ".jaxexport"


def export_dir() -> str | None:
    directory = compile_cache.cache_dir()
    return None if directory is None else os.path.join(directory, "exports")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every .py file of the llada_jax package (names and contents)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _describe(leaf) -> str:
    sharding = getattr(leaf, "sharding", None)
    return f"{jax.typeof(leaf)}@{sharding}" if sharding is not None else str(jax.typeof(leaf))


def key(name: str, static: dict, args) -> str:
    """The file name for a trace of `name` with these static options and arguments (see the module docstring)."""
    import flax
    import jaxlib

    leaves, tree = jax.tree.flatten(args)
    parts = {
        "name": name, "static": static, "tree": str(tree), "args": [_describe(x) for x in leaves],
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}:{d.process_index}" for d in jax.devices()],
        "settings": [str(jax.config.jax_default_matmul_precision), bool(jax.config.jax_enable_x64)],
        "versions": [jax.__version__, jaxlib.__version__, flax.__version__], "source": source_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:32]


class JittedProgram:
    """Stands in for an export that JAX refuses (a custom call without serialization guarantees, such as cuDNN
    attention on GPU): `.call` is the plain jitted function, traced in every run as before."""

    def __init__(self, fn):
        self.call = jax.jit(fn)


def load_or_export(name: str, fn, args, static: dict):
    """(program, True when its trace came from the cache); run it with `program.call(*args)`.

    `fn` is a function of `args` alone (static options bound, e.g. a functools.partial of a jitted function),
    and `static` must name every option bound into it. Unreadable entries are traced again and rewritten;
    writes are atomic (temp file + rename).
    """
    directory = export_dir()
    if directory is None:  # caches turned off
        return JittedProgram(fn), False
    path = os.path.join(directory, key(name, static, args) + SUFFIX)
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                return jax.export.deserialize(bytearray(f.read())), True
        except Exception:  # noqa: BLE001 - a truncated or foreign file: trace again and replace it
            pass
    try:
        exported = jax.export.export(jax.jit(fn))(*args)
    except Exception:  # noqa: BLE001 - not exportable here: run it jitted (a real error surfaces from that call)
        return JittedProgram(fn), False
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(exported.serialize())
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache directory only loses the speed-up
    return exported, False
