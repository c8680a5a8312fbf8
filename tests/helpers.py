"""Shared test fixtures: a tiny config built through the same loader and overrides users have."""
import importlib.util
import os
import sys

from llada_jax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")

SMALL_MODEL = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.mlp_hidden=64", "model.vocab_size=320",
    "model.max_seq_len=64", "train.seq_len=16", "train.global_batch_size=8", "train.steps=4", "train.log_every=1",
    "optimizer.warmup_steps=1",
]


def small_config(*overrides: str):
    """configs/tiny.py shrunk to a model that compiles and steps in about a second."""
    return load_config(TINY, SMALL_MODEL + list(overrides))


def params_export(directory):
    """small_config() with random params, written as a params export; returns its path as a string."""
    from llada_jax.checkpoints import params_export
    from llada_jax.models import registry as M
    from llada_jax.config import ModelConfig

    config = small_config()
    params = M.init_params(ModelConfig.from_config(config.model), 0)
    return str(params_export.save_params(directory / "params", params, config))


def all_avals(jaxpr):
    """Every output aval of a jaxpr, nested jaxprs (scan, remat, custom_vjp) included."""
    import jax

    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield var.aval
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from all_avals(sub)


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process (or subprocess) with `devices` simulated CPU devices.

    The tests' models are tiny, so compiling, not running, is what takes the time: optimisation level 0, and
    XLA CPU's older loop emitters instead of the fusion emitters (a sharded train step compiled in about 3.2 s
    instead of 5.8 s)."""
    return (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
            "--xla_cpu_use_fusion_emitters=false")


# small_config's model as LLaDA2.0's mixture of experts (three layers: one dense, two with 8 experts, top 2)
MOE_MODEL = [
    "model.family=llada2_moe", "model.n_layers=3", "model.n_kv_heads=2", "model.qk_norm=True", "model.rotary_dim=4",
    "model.moe.experts=8", "model.moe.top_k=2", "model.moe.expert_hidden=16", "model.moe.shared_experts=1",
    "model.moe.first_dense_layers=1", "model.moe.router=sigmoid", "model.moe.norm_topk=True",
    "model.moe.routed_scaling=2.5", "model.moe.n_groups=4", "model.moe.topk_groups=2", "model.moe.expert_bias=True",
]


def small_moe_config(*overrides: str):
    """small_config() as a llada2_moe model (float32, so 8 devices and 1 agree to rounding)."""
    return small_config(*MOE_MODEL, "model.dtype=float32", *overrides)


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the scripts are not a package); registered in sys.modules first,
    since dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
