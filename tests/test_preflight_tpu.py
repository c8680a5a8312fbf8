"""Ahead-of-time compiles for a TPU topology from this CPU machine (libtpu): the train step with the splash
kernel compiles for v5p chips, and `llada-jax preflight --topology` reports per-chip memory against the chip's HBM."""
import json
import os

import pytest

from helpers import SMALL_MODEL, TINY
from llada_jax import preflight, sharding
from llada_jax.cli import main
from llada_jax.config import ConfigError
from llada_jax.train import Trainer

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


def test_train_step_with_splash_compiles_for_tpu(tpu_devices, capsys):
    from helpers import small_config

    config = small_config(*OVERRIDES)
    mesh = sharding.make_mesh(config.mesh, tpu_devices)
    hlo = Trainer(config, mesh).compile_step().as_text()
    assert "tpu_custom_call" in hlo and "splash" in hlo  # the Pallas kernel, not a dense fallback

    assert main(["preflight", f"--config={TINY}", f"--topology={TOPOLOGY}", "--json",
                 *[f"--config.{o}" for o in OVERRIDES]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5" and report["mesh"]["fsdp"] == 4
    assert report["device_limit_bytes"] == preflight.TPU_HBM_BYTES["TPU v5"]
    assert report["sequences_per_device"] == 2 and report["temp_bytes"] > 0
    per_token = report["temp_bytes"] / (2 * 128)
    assert report["temp_bytes_per_token"] == pytest.approx(per_token)
    free = report["device_limit_bytes"] - (report["peak_bytes"] - report["temp_bytes"])
    assert report["max_sequences_per_device"] == int(free // (per_token * 128))
    assert os.environ["TPU_WORKER_HOSTNAMES"] == "localhost"


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
