"""JAX's persistent compilation cache for the CLI, so a repeated command with the same shapes skips compiling.

On by default under ~/.cache/llada_jax/jax; the environment variable LLADA_JAX_COMPILATION_CACHE names
another directory, or turns it off with "off". The cache is keyed by JAX on the program, the devices and
the compiler options, so a stale entry is never used for a different model, shape or machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings

ENV_VAR = "LLADA_JAX_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "llada_jax", "jax")
MIN_COMPILE_SECONDS = 0.2  # also keep the small programs (params placement, casts): start-up adds them up
TIMES_FILE = "compile_times.json"  # seconds the last compile of each (program, shapes, devices) took


def cache_dir() -> str | None:
    """The directory the CLI caches compiled programs in, or None when turned off."""
    setting = os.environ.get(ENV_VAR, DEFAULT_DIR).strip()
    if setting.lower() in ("", "off", "0", "none", "false"):
        return None
    return os.path.abspath(os.path.expanduser(setting))


def enable() -> str | None:
    """Point JAX at the cache directory (created if missing); returns it, or None when turned off or unwritable.

    Before JAX is imported this only sets its environment variables (read when JAX loads), so the CLI can
    report a bad flag or config value without waiting for JAX.
    """
    path = cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home must not stop the command: it only loses the speed-up
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # an explicit LLADA_JAX_COMPILATION_CACHE wins over JAX variables inherited from a parent process
        explicit = ENV_VAR in os.environ
        for name, value in settings.items():
            if explicit:
                os.environ[name.upper()] = str(value)
            else:
                os.environ.setdefault(name.upper(), str(value))
    return path


def _times_path() -> str | None:
    path = cache_dir()
    return None if path is None else os.path.join(path, TIMES_FILE)


def _read_times() -> dict:
    path = _times_path()
    try:
        with open(path, encoding="utf-8") as f:
            times = json.load(f)
        return times if isinstance(times, dict) else {}
    except (OSError, TypeError, ValueError):
        return {}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def last_compile_seconds(key: str) -> float | None:
    """How long the last compile described by `key` took (None: never recorded, or the cache is off)."""
    value = _read_times().get(_digest(key))
    return float(value) if isinstance(value, (int, float)) else None


def remember_compile_seconds(key: str, seconds: float) -> None:
    """Records a compile's duration for the next `last_compile_seconds` (silently skipped where unwritable)."""
    path = _times_path()
    if path is None:
        return
    times = _read_times()
    times[_digest(key)] = round(float(seconds), 1)
    try:
        with open(f"{path}.{os.getpid()}.tmp", "w", encoding="utf-8") as f:
            json.dump(times, f)
        os.replace(f"{path}.{os.getpid()}.tmp", path)
    except OSError:
        pass  # a read-only or full disk only loses the estimate


@contextlib.contextmanager
def uncached(active: bool = True):
    """Keeps the block's compiles out of the persistent cache (when `active`): programs compiled for a TPU
    topology from a machine without TPUs cannot be loaded back here, and JAX warns about each such entry."""
    if not active:
        yield
        return
    import jax

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Error reading persistent compilation cache entry")
            yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
