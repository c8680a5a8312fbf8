"""Every test process sees 8 simulated CPU devices, so sharded code paths run here as on a pod slice.

XLA's CPU backend compiles at optimisation level 0 with its loop emitters in tests (`helpers.xla_flags`): the
models are tiny, so compiling dominates (level 0 took a sharded train step's compile-and-first-step from 18.5 s
to 8.7 s; the loop emitters then took its compile from about 5.8 s to 3.2 s, with the same losses).

One persistent compilation cache in a temporary folder serves the whole session: this process and every CLI
subprocess it starts (through LLADA_JAX_COMPILATION_CACHE and JAX's own variables), so the many small runs of
the same model compile each program once instead of once per test. Nothing is written to ~/.cache; the folder
goes at exit.
"""
import atexit
import os
import shutil
import tempfile

from helpers import xla_flags  # noqa: E402

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "LLADA_JAX_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llada_jax_test_compilation_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["LLADA_JAX_COMPILATION_CACHE"] = _cache

from llada_jax.utils import compile_cache  # noqa: E402  (before jax: sets JAX's variables, inherited by subprocesses)

compile_cache.enable()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 2-step run of helpers.small_config (checkpoints at steps 1 and 2, params export), trained once per
    session for every test that only reads a trained workdir (or copies it before changing it)."""
    from llada_jax.training import loop

    from helpers import small_config

    workdir = tmp_path_factory.mktemp("trained_run")
    config = small_config("checkpoint.tensorboard=False", "train.eval_batches=1", "train.steps=2",
                          "checkpoint.every_steps=1")
    loop.run(config, workdir, quiet=True)
    return workdir
