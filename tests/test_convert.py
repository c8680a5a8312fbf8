"""Conversion to and from Hugging Face folders, checked against an independent PyTorch implementation."""
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from llada_jax.checkpoints import params_export
from llada_jax.interop import hf_export, hf_import
from llada_jax.interop import safetensors_io
from llada_jax.models import registry as M
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig

from helpers import ROOT, small_config


def reference(folder, **kwargs):
    """The independent PyTorch implementation (skips the test where torch is not installed)."""
    pytest.importorskip("torch")
    from llada_jax.interop.torch_reference import ReferenceModel

    return ReferenceModel(str(folder), **kwargs)


def export(tmp_path, *overrides, name="ckpt"):
    config = small_config(*overrides)
    params = M.init_params(ModelConfig.from_config(config.model), 0)
    params = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(1), a.shape), params)  # norms != 1
    params_export.save_params(tmp_path / name, params, config)
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
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "llada" and hf["architectures"] == ["LLaDAModelLM"]
    assert hf["mask_token_id"] == 259 and hf["weight_tying"] is False and hf["mlp_hidden_size"] == 64
    tokens = tokens_with_masks(config)
    ref = reference(tmp_path / "hf")(tokens).numpy()
    assert np.abs(ref - jax_logits(params, config, tokens)).max() < 1e-4


def test_official_names_and_shapes(tmp_path):
    ckpt, _, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf")
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
                 f"--config={ROOT}/configs/tiny.py"]) == 0
    back, back_config = params_export.load_params(tmp_path / "back")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back_config.model.d_model == 32 and back_config.model.mask_token_id == 259
    assert not list(tmp_path.glob(".back.import-*"))  # the memory-mapped scratch files are gone


def test_bfloat16_export_rounds_each_weight(tmp_path):
    ckpt, params, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    tensors = dict(safetensors_io.iterate(str(tmp_path / "hf" / "model.safetensors")))
    want = np.asarray(params["blocks"]["up_proj"][1]).T.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(tensors["model.transformer.blocks.1.up_proj.weight"], want)


def test_sharded_export_with_index_round_trips(tmp_path):
    ckpt, params, _ = export(tmp_path)
    files = hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32", max_shard_bytes=40_000)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards) and len(index["weight_map"]) == 21
    hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    back, _ = params_export.load_params(tmp_path / "back")
    np.testing.assert_array_equal(np.asarray(back["ff_out"]), np.asarray(params["ff_out"]))


def test_tokenizer_folder_is_copied(tmp_path):
    ckpt, _, _ = export(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    files = hf_export.to_hf(ckpt, tmp_path / "hf", tokenizer=tmp_path / "tok")
    assert "tokenizer.json" in files and (tmp_path / "hf" / "tokenizer.json").exists()
    assert sorted(files) == sorted(p.name for p in (tmp_path / "hf").iterdir())  # the CLI's "wrote N files"


def test_autoregressive_baseline_exports_as_llama(tmp_path):
    ckpt, params, config = export(tmp_path, "model.dtype=float32", "model.causal=True", "train.objective=ar",
                                  "model.n_kv_heads=2")
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert hf["num_key_value_heads"] == 2 and hf["tie_word_embeddings"] is False
    header, _ = safetensors_io.read_header(str(tmp_path / "hf" / "model.safetensors"))
    assert "model.layers.0.self_attn.o_proj.weight" in header and "lm_head.weight" in header
    tokens = tokens_with_masks(config)
    ref = reference(tmp_path / "hf")(tokens).numpy()
    assert np.abs(ref - jax_logits(params, config, tokens)).max() < 1e-4
    # and back: bitwise, still the causal baseline
    hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    back, back_config = params_export.load_params(tmp_path / "back")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back_config.model.causal and back_config.train.objective == "ar" and back_config.model.n_kv_heads == 2


def test_transformers_llama_loads_the_baseline_export_and_its_save_imports_back(tmp_path):
    """transformers' own LlamaForCausalLM (rotate-half q/k layout, no permutation) gives our logits, and a folder
    written by its save_pretrained (an independent safetensors writer) imports to the same weights, as the
    bidirectional init of a diffusion run."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ckpt, params, config = export(tmp_path, "model.dtype=float32", "model.causal=True", "train.objective=ar",
                                  "model.n_kv_heads=2")
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    tokens = tokens_with_masks(config)
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = model(torch.as_tensor(tokens)).logits.numpy()
    assert np.abs(hf_logits - jax_logits(params, config, tokens)).max() < 1e-4
    model.save_pretrained(str(tmp_path / "saved"))  # no llada_jax_config.json: a foreign AR checkpoint
    hf_import.from_hf(tmp_path / "saved", tmp_path / "back", small_config("model.dtype=float32"))
    back, back_config = params_export.load_params(tmp_path / "back")
    assert not back_config.model.causal and back_config.model.hf_format == "llama"  # a diffusion init
    back_config.model.causal = True  # with the attention it was trained with, the same model
    assert np.abs(jax_logits(back, back_config, tokens) - hf_logits).max() < 1e-4


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
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    _rewrite(tmp_path / "hf", **edit)
    with pytest.raises(ConfigError) as err:
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_the_model_cannot_represent(tmp_path):
    ckpt, _, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf, weight_tying=True)))
    with pytest.raises(ConfigError, match="weight_tying=True; llada_jax's model needs weight_tying=False"):
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf, model_type="gpt2")))
    with pytest.raises(ConfigError, match="model_type='gpt2'"):
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path}", f"--out={tmp_path / 'x'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["convert", "to-hf", f"--checkpoint={tmp_path}", f"--out={tmp_path / 'x'}", "--max-shard-size=lots"]) == 2
    assert "is not a size" in capsys.readouterr().err


def test_reference_causal_switch_is_what_makes_the_baseline_match(tmp_path):
    """Without its causal mask the reference no longer matches the AR baseline: the mask is really applied."""
    ckpt, params, config = export(tmp_path, "model.dtype=float32", "model.causal=True", "train.objective=ar")
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    tokens = tokens_with_masks(config)
    bidirectional = reference(tmp_path / "hf", causal=False)(tokens).numpy()
    assert np.abs(bidirectional - jax_logits(params, config, tokens)).max() > 1e-3  # the mask matters


def test_safetensors_package_reads_the_export(tmp_path):
    """An independent reader (the safetensors library) sees our bfloat16 files exactly as written."""
    pytest.importorskip("torch")
    safe_open = pytest.importorskip("safetensors").safe_open
    ckpt, params, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        q = f.get_tensor("model.transformer.blocks.1.q_proj.weight")
        assert str(q.dtype) == "torch.bfloat16" and tuple(q.shape) == (32, 32)
        want = np.asarray(params["blocks"]["q_proj"][1]).reshape(32, 32).T.astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(q.float().numpy(), want.astype(np.float32))


def test_export_streams_one_parameter_at_a_time(tmp_path, monkeypatch):
    """to-hf never restores the whole params tree (an 8B model must fit a 64 GB host)."""
    ckpt, params, _ = export(tmp_path)

    def whole_restore(*args, **kwargs):
        raise AssertionError("to_hf restored the whole checkpoint")

    monkeypatch.setattr(params_export, "load_params", whole_restore)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    tensors = dict(safetensors_io.iterate(str(tmp_path / "hf" / "model.safetensors")))
    np.testing.assert_array_equal(tensors["model.transformer.wte.weight"], np.asarray(params["wte"]))


def test_cli_round_trip_without_config_keeps_the_run_config(tmp_path):
    ckpt, _, config = export(tmp_path, "train.steps=7")
    assert main(["convert", "to-hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}", "--max-shard-size=30KB"]) == 0
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path / 'hf'}", f"--out={tmp_path / 'back'}",
                 "--config.model.max_seq_len=32"]) == 0
    _, back_config = params_export.load_params(tmp_path / "back")
    assert back_config.train.steps == 7 and back_config.model.max_seq_len == 32


def _edit_config(folder, **changes):
    hf = json.loads((folder / "config.json").read_text())
    hf.update(changes)
    (folder / "config.json").write_text(json.dumps(hf))


@pytest.mark.parametrize("changes, overrides, fragment", [
    ({}, ["model.vocab_size=512"], "--config.model.vocab_size=512 disagrees with config.json, which gives 320"),
    ({"mask_token_id": 400}, [], "mask_token_id=400 is outside the checkpoint's vocabulary [0, 320)"),
    ({"embedding_size": 300}, [], "embedding_size=300 < vocab_size=320"),
    ({"vocab_size": 321, "embedding_size": 321}, [], "tensor model.transformer.wte.weight has shape (320, 32) but config.json implies (321, 32)"),
    ({"activation_type": "swiglu"}, [], "activation_type='swiglu'; llada_jax's model needs activation_type='silu'"),
    ({"n_kv_heads": 3}, [], "n_heads=4, n_kv_heads=3"),
])
def test_import_config_mismatches_fail_with_one_sentence(tmp_path, changes, overrides, fragment):
    ckpt, _, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(ConfigError) as err:
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config(*overrides), overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "back").exists()


def test_vocab_override_mismatch_through_the_cli(tmp_path, capsys):
    ckpt, _, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf")
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path / 'hf'}", f"--out={tmp_path / 'back'}",
                 "--config.model.vocab_size=512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vocab_size=512 disagrees with config.json" in err


def test_integer_tensor_is_refused(tmp_path):
    ckpt, _, _ = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    path = str(tmp_path / "hf" / "model.safetensors")
    tensors = {name: np.array(array) for name, array in safetensors_io.iterate(path)}
    tensors["model.transformer.ln_f.weight"] = tensors["model.transformer.ln_f.weight"].astype(np.int32)
    os.remove(path)
    safetensors_io.write(path, [(n, a.shape, a.dtype) for n, a in tensors.items()], tensors.__getitem__)
    with pytest.raises(ConfigError, match="tensor model.transformer.ln_f.weight has dtype I32; weights must be"):
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())


def test_llama_rope_scaling_is_refused(tmp_path):
    ckpt, _, _ = export(tmp_path, "model.causal=True", "train.objective=ar")
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    _edit_config(tmp_path / "hf", rope_scaling={"rope_type": "llama3", "factor": 8.0}, rope_parameters=None)
    with pytest.raises(ConfigError, match="'llama3' RoPE scaling"):
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())


def test_export_refuses_a_tokenizer_larger_than_the_vocab_and_a_used_folder(tmp_path):
    ckpt, _, _ = export(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 400}}}))
    with pytest.raises(ConfigError, match="has ids up to 400 but the model's vocab_size is 320"):
        hf_export.to_hf(ckpt, tmp_path / "hf", tokenizer=tmp_path / "tok")
    hf_export.to_hf(ckpt, tmp_path / "hf")
    with pytest.raises(ConfigError, match="is not empty"):
        hf_export.to_hf(ckpt, tmp_path / "hf")


def test_tokenizer_copy_skips_another_checkpoints_weights_and_config(tmp_path):
    """Passing an official release folder as --tokenizer copies its tokenizer and modeling code, not its weights."""
    ckpt, _, _ = export(tmp_path)
    release = tmp_path / "release"
    release.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "modeling_llada.py", "config.json",
                 "model.safetensors.index.json", "model-00001-of-00006.safetensors"):
        (release / name).write_text("{}")
    files = hf_export.to_hf(ckpt, tmp_path / "hf", tokenizer=release)
    assert {"tokenizer.json", "tokenizer_config.json", "modeling_llada.py"} <= set(files)
    assert not (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llada"


def test_the_torch_extra_installs_a_transformers_that_loads_the_official_modeling_code():
    """`pip install -e .[torch]` resolved transformers 5.x, under which the official modeling_llada.py (loaded with
    trust_remote_code, the documented path for an export) fails; the extra keeps to 4.x."""
    import ast

    from packaging.requirements import Requirement

    from helpers import ROOT

    tree = ast.parse(open(f"{ROOT}/setup.py", encoding="utf-8").read())
    setup_call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    extras = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "extras_require"))
    (pin,) = [Requirement(r) for r in extras["torch"] if r.startswith("transformers")]
    assert "4.57.6" in pin.specifier and "5.0.0" not in pin.specifier and "5.24.0" not in pin.specifier
