"""Mixture-of-experts checkpoints to and from Hugging Face folders (LLaDA2.0 with one tensor per expert or stacked,
LLaDA-MoE): the official names and shapes, the independent PyTorch reference's logits within 1e-4 of ours in
float32, and the way back bitwise."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import small_moe_config
from llada_jax.checkpoints import params_export
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop import hf_export, hf_import, safetensors_io
from llada_jax.models import registry as M

LLADA_MOE = ("model.family=llada_moe", "model.moe.router=softmax", "model.moe.norm_topk=False",
             "model.moe.routed_scaling=1.0", "model.moe.n_groups=1", "model.moe.topk_groups=1",
             "model.moe.expert_bias=False", "model.moe.load_balance_coef=0.01")


def export(tmp_path, *overrides):
    """A random (not freshly initialised: norms and biases away from 1 and 0) MoE params export."""
    config = small_moe_config(*overrides)
    params = M.init_params(ModelConfig.from_config(config.model), 0)
    keys = iter(jax.random.split(jax.random.key(1), 64))
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(next(keys), a.shape), params)
    params_export.save_params(tmp_path / "ckpt", params, config)
    return tmp_path / "ckpt", params, config


def jax_logits(params, config, tokens):
    graphdef = M.graphdef(ModelConfig.from_config(config.model))
    return np.asarray(M.apply(graphdef, params, jnp.asarray(tokens)))


def reference_logits(folder, tokens):
    pytest.importorskip("torch")
    from llada_jax.interop.torch_reference import ReferenceModel

    return ReferenceModel(str(folder))(tokens).numpy()


def tensors(folder):
    return {name: array for f in sorted(folder.glob("*.safetensors")) for name, array in safetensors_io.iterate(str(f))}


TOKENS = np.random.default_rng(0).integers(0, 259, (2, 12))


@pytest.mark.parametrize("layout", ["per-expert", "stacked"])
def test_llada2_export_matches_the_torch_reference_and_imports_back_bitwise(tmp_path, layout):
    ckpt, params, config = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32", expert_layout=layout)
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == ("llada2_moe" if layout == "per-expert" else "llada2_moe_veomni")
    assert hf["architectures"] == ["LLaDA2MoeModelLM"] and hf["num_experts"] == 8 and hf["first_k_dense_replace"] == 1
    assert hf["n_group"] == 4 and hf["topk_group"] == 2 and hf["routed_scaling_factor"] == 2.5
    files = tensors(tmp_path / "hf")
    d, hd = config.model.d_model, config.model.d_model // config.model.n_heads
    assert files["model.layers.0.attention.query_key_value.weight"].shape == ((4 + 2 * 2) * hd, d)
    assert files["model.layers.2.mlp.gate.weight"].shape == (8, d)
    np.testing.assert_array_equal(files["model.layers.2.mlp.gate.expert_bias"], params["moe_blocks"]["expert_bias"][1])
    if layout == "per-expert":
        assert files["model.layers.1.mlp.experts.7.down_proj.weight"].shape == (d, 16)
        assert "model.layers.0.mlp.gate_proj.weight" in files and "model.layers.1.mlp.experts.gate_proj" not in files
    else:
        np.testing.assert_array_equal(files["model.layers.1.mlp.experts.gate_proj"],
                                      np.swapaxes(params["moe_blocks"]["expert_gate"][0], 1, 2))
    np.testing.assert_array_equal(files["model.layers.1.mlp.shared_experts.down_proj.weight"],
                                  np.asarray(params["moe_blocks"]["shared_down"][0]).T)
    assert np.abs(reference_logits(tmp_path / "hf", TOKENS) - jax_logits(params, config, TOKENS)).max() < 1e-4
    back = hf_import.from_hf(tmp_path / "hf", tmp_path / "back", config)
    assert back.model.family == "llada2_moe" and back.model.moe.topk_groups == 2
    restored, _ = params_export.load_params(str(tmp_path / "back"))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_llada_moe_export_matches_the_torch_reference_and_imports_back_bitwise(tmp_path):
    ckpt, params, config = export(tmp_path, *LLADA_MOE)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "lladamoe" and hf["architectures"] == ["LLaDAMoEModelLM"]
    assert hf["moe_layer_freq"] == [0, 1, 1] and hf["expert_intermediate_size"] == 16
    assert hf["shared_expert_intermediate_size"] == 16 and hf["router_aux_loss_coef"] == 0.01
    files = tensors(tmp_path / "hf")
    assert {"model.layers.1.self_attn.q_norm.weight", "model.layers.2.mlp.experts.3.up_proj.weight",
            "model.layers.2.shared_expert.gate_proj.weight", "model.layers.0.mlp.down_proj.weight"} <= set(files)
    assert np.abs(reference_logits(tmp_path / "hf", TOKENS) - jax_logits(params, config, TOKENS)).max() < 1e-4
    # the release's own config.json says model_type "llada" with the MoE architecture: read the same way
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf, model_type="llada")))
    back = hf_import.from_hf(tmp_path / "hf", tmp_path / "back", config)
    assert back.model.family == "llada_moe" and back.model.moe.load_balance_coef == 0.01
    restored, _ = params_export.load_params(str(tmp_path / "back"))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _rewrite(folder, *, drop=None, reshape=None):
    import os

    path = str(folder / "model.safetensors")
    found = dict(safetensors_io.iterate(path))
    if drop:
        del found[drop]
    if reshape:
        found[reshape] = found[reshape][:-1]
    os.remove(path)  # the arrays read map the old file: unlinked, it stays readable while the new one is written
    safetensors_io.write(path, [(n, a.shape, a.dtype) for n, a in found.items()], found.__getitem__)


@pytest.mark.parametrize("edit, fragment", [
    (dict(drop="model.layers.2.mlp.experts.5.gate_proj.weight"), "is missing 1 tensor(s), e.g. "
                                                                  "model.layers.2.mlp.experts.5.gate_proj.weight"),
    (dict(reshape="model.layers.1.attention.query_key_value.weight"), "tensor model.layers.1.attention.query_key_value"
                                                                      ".weight has shape (63, 32) but config.json "
                                                                      "implies (64, 32)"),
])
def test_every_tensor_is_checked_against_config_json(tmp_path, edit, fragment):
    ckpt, _, config = export(tmp_path)
    hf_export.to_hf(ckpt, tmp_path / "hf", dtype="float32")
    _rewrite(tmp_path / "hf", **edit)
    with pytest.raises(ConfigError) as err:
        hf_import.from_hf(tmp_path / "hf", tmp_path / "back", config)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_models_a_format_cannot_hold_are_refused_in_one_sentence(tmp_path):
    ckpt, _, _ = export(tmp_path, "model.moe.router=softmax")
    with pytest.raises(ConfigError, match="LLaDA2.0 format's model always has sigmoid router scores"):
        hf_export.to_hf(ckpt, tmp_path / "hf")
    ckpt, _, _ = export(tmp_path / "moe", *LLADA_MOE, "model.moe.expert_bias=True")
    with pytest.raises(ConfigError, match="LLaDA-MoE format's router is softmax"):
        hf_export.to_hf(ckpt, tmp_path / "hf2")
    with pytest.raises(ConfigError, match="--expert-layout=stacked is LLaDA2.0's"):
        hf_export.to_hf(ckpt, tmp_path / "hf3", expert_layout="stacked")


def test_cli_round_trip_of_the_stacked_layout(tmp_path, capsys):
    ckpt, params, _ = export(tmp_path)
    assert main(["convert", "to-hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}", "--dtype=float32",
                 "--expert-layout=stacked"]) == 0
    assert main(["convert", "from-hf", f"--hf-dir={tmp_path / 'hf'}", f"--out={tmp_path / 'back'}"]) == 0
    assert "imported 3 x 32, 8 experts (bidirectional)" in capsys.readouterr().out
    restored, _ = params_export.load_params(str(tmp_path / "back"))
    np.testing.assert_array_equal(restored["moe_blocks"]["expert_down"], params["moe_blocks"]["expert_down"])
