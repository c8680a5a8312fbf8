"""JAX's persistent compilation cache for the CLI, so a repeated command with the same shapes skips compiling.

On by default under ~/.cache/llada_jax/jax; the environment variable LLADA_JAX_COMPILATION_CACHE names
another directory, or turns it off with "off". The cache is keyed by JAX on the program, the devices and
the compiler options, so a stale entry is never used for a different model, shape or machine.
"""
from __future__ import annotations

import os
import sys

ENV_VAR = "LLADA_JAX_COMPILATION_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "llada_jax", "jax")
MIN_COMPILE_SECONDS = 0.2  # also keep the small programs (params placement, casts): start-up adds them up


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
