"""Config files, overrides, and the one-sentence errors for values a user can get wrong."""
import os

import pytest

from llada_jax.config import ConfigError, ModelConfig, load_config, validate

from helpers import ROOT, small_config


@pytest.mark.parametrize("name", ["base", "tiny", "llada_1b", "llada_8b", "sft_8b"])
def test_shipped_configs_validate(name):
    config = load_config(os.path.join(ROOT, "configs", f"{name}.py"))
    validate(config, device_count=8 if name in ("base", "tiny") else 256)


def test_8b_config_has_the_paper_shape():
    config = load_config(os.path.join(ROOT, "configs", "llada_8b.py"))
    m = ModelConfig.from_config(config.model)
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.mlp_hidden, m.vocab_size) == (32, 4096, 32, 128, 12288, 126464)
    assert m.mask_token_id == 126336 and m.rope_theta == 500000.0
    assert config.train.seq_len == 4096 and config.train.global_batch_size == 1280
    assert config.optimizer.lr == 4e-4 and config.optimizer.weight_decay == 0.1 and config.optimizer.warmup_steps == 2000


def test_overrides_keep_types():
    config = small_config("train.steps=7", "optimizer.lr=1e-3", "model.causal=true", "data.source=text")
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.optimizer.lr == 1e-3 and config.model.causal is True and config.data.source == "text"


@pytest.mark.parametrize("override, fragment", [
    ("train.stepz=3", "unknown config field 'train.stepz'"),
    ("nosuch.steps=3", "unknown config section"),
    ("train.steps=many", "is not a valid int"),
    ("train.steps", "has no value"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        small_config(override)


@pytest.mark.parametrize("overrides, fragment", [
    (["model.d_model=30"], "d_model=30 is not divisible by model.n_heads=4"),
    (["model.n_kv_heads=3"], "not a multiple of model.n_kv_heads=3"),
    (["model.remat=sometimes"], "remat='sometimes' is not a known remat policy"),
    (["train.steps=-1"], "train.steps=-1 must be a positive integer"),
    (["mesh.fsdp=3"], "multiplies to 3 but there are 8 devices"),
    (["mesh.fsdp=-1", "mesh.tensor=-1"], "at most one -1"),
    (["mesh.fsdp=-1", "mesh.tensor=3"], "cannot fill 8 devices"),
    (["train.global_batch_size=6"], "does not split over mesh data*fsdp=8"),
    (["train.grad_accum_steps=3"], "not divisible by train.grad_accum_steps=3"),
    (["train.seq_len=1000"], "exceeds model.max_seq_len=64"),
    (["model.mask_token_id=400"], "mask_token_id=400 is outside the vocabulary"),
    (["train.objective=ar"], "needs model.causal=True"),
    (["optimizer.schedule=linear"], "optimizer.schedule='linear' is unknown"),
    (["model.dtype=float8"], "not a supported dtype"),
])
def test_invalid_values_stop_with_one_sentence(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        validate(small_config(*overrides), device_count=8)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.py")


def test_a_block_diffusion_run_decodes_with_the_block_it_ended_at():
    """sample/score/eval/export use the schedule's last block; a block holding the whole sequence is the
    full-sequence objective, so that model decodes as a full-sequence one (no block size)."""
    from llada_jax.config import decode_block_size

    def config(**train):
        return load_config(os.path.join(ROOT, "configs", "tiny.py"), [f"train.{k}={v}" for k, v in train.items()])

    assert decode_block_size(config(objective="mdm")) is None
    assert decode_block_size(config(objective="block_diffusion", block_size=4, seq_len=16)) == 4
    assert decode_block_size(config(objective="block_diffusion", block_size=4, seq_len=16,
                                    block_schedule="4:0.5,8:0.5")) == 8
    assert decode_block_size(config(objective="block_diffusion", block_size=4, seq_len=16,
                                    block_schedule="4:0.5,16:0.5")) is None
