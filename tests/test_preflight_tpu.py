"""Ahead-of-time compiles for a TPU topology from this CPU machine (libtpu): the train step, the sampler and the
scorer compile for v5p chips with the splash kernel (the sampler and scorer holding no length-by-length scores),
and `llada-jax preflight --topology` reports per-chip memory against the chip's HBM."""
import json
import os

import pytest

from helpers import SMALL_MODEL, TINY
from llada_jax import sharding
from llada_jax.training import preflight
from llada_jax.utils import chips
from llada_jax.cli import main
from llada_jax.config import ConfigError
from llada_jax.training.trainer import Trainer

TOPOLOGY = "v5p:2x2x1"  # 4 chips, the smallest v5p slice
# 128 positions: the splash kernel's tile; fsdp over the 4 chips
OVERRIDES = [o for o in SMALL_MODEL if not o.startswith(("train.seq_len", "model.max_seq_len"))] + [
    "train.seq_len=128", "model.max_seq_len=128", "model.attention=splash"]


@pytest.fixture(scope="module")
def tpu_devices():
    try:
        return preflight.topology_devices(TOPOLOGY)
    except ConfigError as e:
        pytest.skip(f"libtpu cannot load here: {e}")


# compiling the same step twice for the topology read back a cache entry JAX cannot load, with a warning each time
@pytest.mark.filterwarnings("error:Error reading persistent compilation cache entry")
def test_train_step_with_splash_compiles_for_tpu(tpu_devices, capsys):
    from helpers import small_config  # noqa: F811

    config = small_config(*OVERRIDES)
    mesh = sharding.make_mesh(config.mesh, tpu_devices)
    hlo = Trainer(config, mesh).compile_step().as_text()
    assert "tpu_custom_call" in hlo and "splash" in hlo  # the Pallas kernel, not a dense fallback

    assert main(["preflight", f"--config={TINY}", f"--topology={TOPOLOGY}", "--json",
                 *[f"--config.{o}" for o in OVERRIDES]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5" and report["mesh"]["fsdp"] == 4
    assert report["device_limit_bytes"] == chips.TPU_HBM_BYTES["TPU v5"]
    assert report["sequences_per_device"] == 2 and report["temp_bytes"] > 0
    per_token = report["temp_bytes"] / (2 * 128)
    assert report["temp_bytes_per_token"] == pytest.approx(per_token)
    free = report["device_limit_bytes"] - (report["peak_bytes"] - report["temp_bytes"])
    assert report["max_sequences_per_device"] == int(free // (per_token * 128))
    assert os.environ["TPU_WORKER_HOSTNAMES"] == "localhost"
    assert report["attention_kernel"] == "splash"
    # XLA's modeled step: every layer counted; its FLOPs hold the 6N matmul FLOPs (attention's core is in the
    # splash custom call, outside the cost model) and sit below 6N + attention
    assert report["modeled_step_s"] > report["modeled_layer_s"] > 0 and report["modeled_bytes"] > 0
    from llada_jax.config import ModelConfig
    from llada_jax.models import flops
    matmul_flops = 6 * flops.param_counts(ModelConfig.from_config(small_config(*OVERRIDES).model))["matmul"] * 2 * 128
    assert matmul_flops < report["modeled_flops"] < 1.5 * report["model_flops_per_device"]
    assert 0 < report["modeled_mfu"] < 1 and "outside XLA's cost model" in report["cost_model_note"]


def test_the_cost_model_counts_scanned_layers_and_head_chunks_one_by_one(tpu_devices):
    """L1 + (n - 1)(L2 - L1) from unrolled 1- and 2-layer compiles equals a 3-layer model compiled unrolled (XLA
    counts a loop body once, so the scanned model's own cost analysis would be far below it)."""
    from helpers import small_config
    from llada_jax.training import cost_model

    config = small_config(*OVERRIDES, "model.n_layers=3", "train.grad_accum_steps=2")
    mesh = sharding.make_mesh(config.mesh, tpu_devices)
    compile_step = lambda c, m: Trainer(c, m).compile_step()  # noqa: E731
    modeled = cost_model.modeled_step(config, mesh, compile_step)
    direct = cost_model.measure(compile_step(cost_model.probe_config(config, 3, 4), mesh))
    assert modeled["modeled_flops"] == pytest.approx(2 * direct.flops, rel=0.01)  # two micro-batches
    assert modeled["modeled_step_s"] == pytest.approx(2 * direct.seconds, rel=0.05)
    scanned = cost_model.measure(compile_step(config, mesh))
    assert scanned.flops < 0.75 * modeled["modeled_flops"]


def test_compile_time_out_of_memory_is_one_clear_line():
    class TooBig:
        def compile_step(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total "
                               "memory required for HLO temporaries (316.06G) exceeds available HBM (95.73G).\nmore")

    with pytest.raises(ConfigError, match=r"does not fit in device memory .*316\.06G.*95\.73G.*model\.remat"):
        preflight.compile_or_explain(TooBig())

    class Broken:
        def compile_step(self):
            raise RuntimeError("some other compiler failure")

    with pytest.raises(RuntimeError, match="other compiler failure"):  # not disguised as a memory problem
        preflight.compile_or_explain(Broken())


LENGTH_BY_LENGTH = r"(?:f32|bf16)\[[0-9,]*256,256\]"  # [.., L, L] scores for L = 256


def compiled_for_tpu(tpu_devices, attention, program):
    """HLO text of `program(graphdef, mask_id, replicated sharding)` -> (jitted fn, abstract args), compiled for
    the v5p slice with a 256-position model and the given attention."""
    import jax

    from helpers import small_config
    from llada_jax.checkpoints import params_export
    from llada_jax.models import registry as model_lib
    from llada_jax.config import ModelConfig

    config = small_config(*[o for o in OVERRIDES if not o.startswith(("train.seq_len", "model.max_seq_len",
                                                                          "model.attention"))],
                          "train.seq_len=256", "model.max_seq_len=256", f"model.attention={attention}")
    mesh = sharding.make_mesh(config.mesh, tpu_devices)
    graphdef = model_lib.split_model(model_lib.abstract_model(ModelConfig.from_config(config.model)))[0]
    params = params_export.abstract_params(config.model, mesh)  # outside the mesh context (logical names)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fn, args = program(graphdef, config.model.mask_token_id, replicated)
    with jax.set_mesh(mesh):
        return jax.jit(fn).lower(params, *args).compile().as_text()


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_sampler_with_splash_compiles_for_tpu_without_length_by_length_scores(tpu_devices, cache):
    """The reverse process on TPU uses the train step's splash kernel and holds no [.., L, L] scores (prompt 128
    + answer 128); the same decoder with dense XLA attention does hold them, so the check can fail."""
    import re

    import jax
    import jax.numpy as jnp

    from llada_jax.inference import sampling

    def decoder(graphdef, mask_id, replicated):
        decode, _ = sampling.decoder(graphdef, gen_length=128, steps=128, block_length=32, cache=cache,
                                     mask_id=mask_id)
        rows = lambda dtype: jax.ShapeDtypeStruct((4, 128), dtype, sharding=replicated)  # noqa: E731
        return decode, (rows(jnp.int32), rows(jnp.bool_), jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                                                                               sharding=replicated))

    splash = compiled_for_tpu(tpu_devices, "splash", decoder)
    assert "tpu_custom_call" in splash and "splash" in splash
    assert not re.search(LENGTH_BY_LENGTH, splash)
    assert re.search(LENGTH_BY_LENGTH, compiled_for_tpu(tpu_devices, "xla", decoder))


def test_scorer_with_splash_compiles_for_tpu_without_length_by_length_scores(tpu_devices):
    """The Monte Carlo scorer's forward pass (answer-window head, guidance) likewise runs on the splash kernel."""
    import functools
    import re

    import jax
    import jax.numpy as jnp

    from llada_jax.inference import likelihood

    def scorer(graphdef, mask_id, replicated):
        fn = functools.partial(likelihood.rows_nll, graphdef, window=32, mask_id=mask_id, cfg_scale=0.5)
        rows = lambda dtype, shape=(8, 256): jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)  # noqa: E731
        return fn, (rows(jnp.int32), rows(jnp.bool_), rows(jnp.int32, (8,)), rows(jnp.int32, (8,)))

    splash = compiled_for_tpu(tpu_devices, "splash", scorer)
    assert "tpu_custom_call" in splash and "splash" in splash
    assert not re.search(LENGTH_BY_LENGTH, splash)
    assert re.search(LENGTH_BY_LENGTH, compiled_for_tpu(tpu_devices, "xla", scorer))


def test_block_sampler_with_exact_cache_compiles_for_tpu_without_canvas_by_canvas_scores(tpu_devices):
    """The block-diffusion decoder (prompt 128, answer 128, block 32: a 288-column canvas) compiles for TPU; with
    the exact cache every pass scores at most two blocks of queries against the canvas, never [.., 288, 288],
    which recomputing every column (cache none) does hold, so the check can fail."""
    import re

    import jax
    import jax.numpy as jnp

    from llada_jax.inference import sampling

    def decoder(cache):
        def build(graphdef, mask_id, replicated):
            decode, _ = sampling.decoder(graphdef, gen_length=128, steps=128, block_length=32, cache=cache,
                                         mask_id=mask_id, block_diffusion=True)
            rows = lambda dtype: jax.ShapeDtypeStruct((4, 128), dtype, sharding=replicated)  # noqa: E731
            key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
            return decode, (rows(jnp.int32), rows(jnp.bool_), key)
        return build

    canvas = r"(?:f32|bf16)\[[0-9,]*288,288\]"
    exact = compiled_for_tpu(tpu_devices, "splash", decoder("exact"))
    assert not re.search(canvas, exact) and re.search(r"f32\[[0-9,]*64,288\]", exact)  # previous + current block
    assert re.search(canvas, compiled_for_tpu(tpu_devices, "splash", decoder("none")))


TWO_STREAM_SQUARE = r"(?:f32|bf16|pred)\[[0-9,]*256,256\]"  # [.., 2L, 2L] for L = 128


@pytest.mark.parametrize("attention", ["splash", "xla"])
def test_block_diffusion_step_compiles_for_tpu_with_splash_and_no_two_stream_square(tpu_devices, attention):
    """The two-stream step (L = 128, block 32: 256 columns) on the v5p slice: the splash kernel with the block mask
    and no [.., 2L, 2L] array anywhere; dense XLA attention does hold one (the check can fail)."""
    import re

    from helpers import small_config

    config = small_config(*[o for o in OVERRIDES if not o.startswith("model.attention")],
                          f"model.attention={attention}", "train.objective=block_diffusion", "train.block_size=32")
    hlo = Trainer(config, sharding.make_mesh(config.mesh, tpu_devices)).compile_step().as_text()
    if attention == "splash":
        assert "tpu_custom_call" in hlo and "splash" in hlo
        assert not re.search(TWO_STREAM_SQUARE, hlo)
    else:
        assert re.search(TWO_STREAM_SQUARE, hlo)
