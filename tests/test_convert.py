"""Conversion to and from Hugging Face folders, checked against an independent PyTorch implementation."""
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from llada_jax import checkpoint, convert, safetensors_io
from llada_jax import model as M
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig

from helpers import small_config

torch = pytest.importorskip("torch")
from llada_jax.torch_reference import ReferenceModel  # noqa: E402


def export(tmp_path, *overrides, name="ckpt"):
    config = small_config(*overrides)
    params = M.init_params(ModelConfig.from_config(config.model), 0)
    params = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(1), a.shape), params)  # norms != 1
    checkpoint.save_params(tmp_path / name, params, config)
    return tmp_path / name, params, config


def jax_logits(params, config, tokens):
    graphdef = M.split_model(M.abstract_model(ModelConfig.from_config(config.model)))[0]
    return np.asarray(M.apply(graphdef, params, jnp.asarray(tokens)))


def tokens_with_masks(config):
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (2, 12))
    tokens[:, ::3] = config.model.mask_token_id
    return tokens


@pytest.mark.parametrize("overrides", [(), ("model.n_kv_heads=2",)])
def test_torch_reference_matches_jax_on_the_converted_checkpoint(tmp_path, overrides):
    ckpt, params, config = export(tmp_path, "model.dtype=float32", *overrides)
    convert.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "llada" and hf["architectures"] == ["LLaDAModelLM"]
    assert hf["mask_token_id"] == 259 and hf["weight_tying"] is False and hf["mlp_hidden_size"] == 64
    tokens = tokens_with_masks(config)
    ref = ReferenceModel(str(tmp_path / "hf"))(tokens).numpy()
    assert np.abs(ref - jax_logits(params, config, tokens)).max() < 1e-4


def test_official_names_and_shapes(tmp_path):
    ckpt, _, _ = export(tmp_path)
    convert.to_hf(ckpt, tmp_path / "hf")
    header, _ = safetensors_io.read_header(str(tmp_path / "hf" / "model.safetensors"))
    assert header["model.transformer.blocks.1.q_proj.weight"]["shape"] == [32, 32]
    assert header["model.transformer.blocks.0.ff_proj.weight"]["shape"] == [64, 32]
    assert header["model.transformer.blocks.0.ff_out.weight"]["shape"] == [32, 64]
    assert header["model.transformer.wte.weight"]["shape"] == [320, 32]
    assert header["model.transformer.ff_out.weight"]["shape"] == [320, 32]
    assert header["model.transformer.ln_f.weight"]["dtype"] == "BF16"
    assert len(header) == 2 * 9 + 3


def test_orbax_to_hf_to_orbax_is_bitwise(tmp_path):
    ckpt, params, config = export(tmp_path)
    assert main(["convert", "to-hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}", "--dtype=float32"]) == 0
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path / 'hf'}", f"--out={tmp_path / 'back'}",
                 f"--config={os.path.dirname(os.path.dirname(__file__))}/configs/tiny.py"]) == 0
    back, back_config = checkpoint.load_params(tmp_path / "back")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back_config.model.d_model == 32 and back_config.model.mask_token_id == 259


def test_bfloat16_export_rounds_each_weight(tmp_path):
    ckpt, params, _ = export(tmp_path)
    convert.to_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    tensors = dict(safetensors_io.iterate(str(tmp_path / "hf" / "model.safetensors")))
    want = np.asarray(params["blocks"]["up_proj"][1]).T.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(tensors["model.transformer.blocks.1.up_proj.weight"], want)


def test_sharded_export_with_index_round_trips(tmp_path):
    ckpt, params, _ = export(tmp_path)
    files = convert.to_hf(ckpt, tmp_path / "hf", dtype="float32", max_shard_bytes=40_000)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards) and len(index["weight_map"]) == 21
    convert.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    back, _ = checkpoint.load_params(tmp_path / "back")
    np.testing.assert_array_equal(np.asarray(back["ff_out"]), np.asarray(params["ff_out"]))


def test_tokenizer_folder_is_copied(tmp_path):
    ckpt, _, _ = export(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    files = convert.to_hf(ckpt, tmp_path / "hf", tokenizer=tmp_path / "tok")
    assert "tokenizer.json" in files and (tmp_path / "hf" / "tokenizer.json").exists()


def test_autoregressive_baseline_exports_as_llama(tmp_path):
    ckpt, params, config = export(tmp_path, "model.dtype=float32", "model.causal=True", "train.objective=ar",
                                  "model.n_kv_heads=2")
    convert.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert hf["num_key_value_heads"] == 2 and hf["tie_word_embeddings"] is False
    header, _ = safetensors_io.read_header(str(tmp_path / "hf" / "model.safetensors"))
    assert "model.layers.0.self_attn.o_proj.weight" in header and "lm_head.weight" in header
    tokens = tokens_with_masks(config)
    ref = ReferenceModel(str(tmp_path / "hf"))(tokens).numpy()
    assert np.abs(ref - jax_logits(params, config, tokens)).max() < 1e-4
    try:
        import transformers  # noqa: F401
    except ImportError:
        return
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32)
    with torch.no_grad():
        hf_logits = model(torch.as_tensor(tokens)).logits.numpy()
    assert np.abs(hf_logits - jax_logits(params, config, tokens)).max() < 1e-4


def _rewrite(folder, drop=None, add=None, reshape=None):
    """Rewrites model.safetensors without one tensor, with an extra one, or with one reshaped."""
    path = str(folder / "model.safetensors")
    tensors = {name: np.array(array) for name, array in safetensors_io.iterate(path)}
    if drop:
        del tensors[drop]
    if add:
        tensors[add] = np.zeros((2,), np.float32)
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    os.remove(path)
    safetensors_io.write(path, [(n, a.shape, a.dtype) for n, a in tensors.items()], tensors.__getitem__)


@pytest.mark.parametrize("edit, fragment", [
    (dict(drop="model.transformer.blocks.1.k_proj.weight"), "is missing 1 tensor(s), e.g. model.transformer.blocks.1.k_proj.weight"),
    (dict(add="model.transformer.blocks.0.q_proj.bias"), "unexpected tensor(s), e.g. model.transformer.blocks.0.q_proj.bias"),
    (dict(reshape="model.transformer.wte.weight"), "tensor model.transformer.wte.weight has shape (319, 32) but config.json implies (320, 32)"),
])
def test_bad_hf_folders_fail_with_one_sentence(tmp_path, edit, fragment):
    ckpt, _, _ = export(tmp_path)
    convert.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    _rewrite(tmp_path / "hf", **edit)
    with pytest.raises(ConfigError) as err:
        convert.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_the_model_cannot_represent(tmp_path):
    ckpt, _, _ = export(tmp_path)
    convert.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf, weight_tying=True)))
    with pytest.raises(ConfigError, match="weight_tying=True; llada_jax's model needs weight_tying=False"):
        convert.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf, model_type="gpt2")))
    with pytest.raises(ConfigError, match="model_type='gpt2'"):
        convert.from_hf(tmp_path / "hf", tmp_path / "back", small_config())


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path}", f"--out={tmp_path / 'x'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["convert", "to-hf", f"--checkpoint={tmp_path}", f"--out={tmp_path / 'x'}", "--max-shard-size=lots"]) == 2
    assert "is not a size" in capsys.readouterr().err
