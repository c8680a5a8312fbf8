"""AR checkpoints (Llama, Qwen2, Qwen3) imported as the init of a diffusion run, checked against transformers'
own models, and block-diffusion models exported in their architecture's names with the block size."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import config as config_lib
from llada_jax.checkpoints import params_export
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop import formats, hf_export, hf_import, safetensors_io
from llada_jax.models import registry as M

from helpers import small_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
ARCHITECTURES = {  # name -> (config class, model class, extra config fields)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),  # 4 heads x 16 != hidden 32
}


def hf_model(tmp_path, name, seed=0):
    """A tiny transformers model with every weight (norms and biases included) moved off its init, saved."""
    config_cls, model_cls, extra = ARCHITECTURES[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**SHAPE, **extra, rope_theta=10000.0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / name))
    return model, tmp_path / name


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def our_logits(params, config, tokens, causal=True):
    """The imported model's logits with causal attention (as the AR checkpoint was trained) or as configured."""
    cfg = dataclasses.replace(ModelConfig.from_config(config.model), causal=causal, dtype="float32")
    return np.asarray(M.apply(M.graphdef(cfg), params, jnp.asarray(tokens)))


TOKENS = np.random.default_rng(0).integers(0, 320, (2, 11))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_ar_checkpoint_imports_as_a_bidirectional_init_with_the_same_causal_logits(tmp_path, name):
    model, folder = hf_model(tmp_path, name)
    assert main(["convert", "from-hf", f"--hf-dir={folder}", f"--out={tmp_path / 'ckpt'}",
                 "--config.train.objective=block_diffusion", "--config.model.dtype=float32"]) == 0
    params, config = params_export.load_params(tmp_path / "ckpt")
    m = config.model
    assert not m.causal and m.hf_format == name.split("_")[0] and config.train.objective == "block_diffusion"
    assert (m.qkv_bias, m.qk_norm, m.tie_embeddings) == (name == "qwen2", name == "qwen3", "tied" in name or name == "qwen2")
    assert m.mask_token_id == 319  # no mask token in an AR vocabulary: the last id
    reference = hf_logits(model, TOKENS)
    assert np.abs(our_logits(params, config, TOKENS) - reference).max() < 1e-4
    assert np.abs(our_logits(params, config, TOKENS, causal=False) - reference).max() > 1e-3  # the mask matters


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_block_diffusion_model_from_qwen_exports_back_to_qwen_names(tmp_path, name):
    model, folder = hf_model(tmp_path, name)
    hf_import.from_hf(folder, tmp_path / "ckpt", small_config("train.objective=block_diffusion",
                                                              "train.block_schedule=4:0.5,8:0.5"))
    assert main(["convert", "to-hf", f"--checkpoint={tmp_path / 'ckpt'}", f"--out={tmp_path / 'hf'}",
                 "--dtype=float32"]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == name and hf["block_size"] == 8  # the size the schedule ends at
    header, _ = safetensors_io.read_header(str(tmp_path / "hf" / "model.safetensors"))
    saved, _ = safetensors_io.read_header(str(folder / "model.safetensors"))
    assert set(header) == set(saved)  # the architecture's own names, biases / norms, tied head and all
    back = getattr(transformers, ARCHITECTURES[name][1]).from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    assert np.abs(hf_logits(back.eval(), TOKENS) - hf_logits(model, TOKENS)).max() < 1e-5


def test_an_ar_checkpoint_imports_as_a_shifted_block_diffusion_init(tmp_path, capsys):
    """The AR-to-diffusion recipe with model.logit_shift: the import keeps the flag, and refuses it in one sentence
    where nothing would decode it block by block."""
    _, folder = hf_model(tmp_path, "qwen3")
    capsys.readouterr()  # transformers' own progress bars while the test writes the folder
    shift = ["--config.model.logit_shift=true", "--config.model.dtype=float32"]
    assert main(["convert", "from-hf", f"--hf-dir={folder}", f"--out={tmp_path / 'mdm'}", *shift]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.logit_shift=True needs block decoding" in err
    assert not (tmp_path / "mdm").exists()
    assert main(["convert", "from-hf", f"--hf-dir={folder}", f"--out={tmp_path / 'ckpt'}", *shift,
                 "--config.train.objective=block_diffusion", "--config.train.block_size=4"]) == 0
    _, config = params_export.load_params(tmp_path / "ckpt")
    assert config.model.logit_shift and config_lib.decode_block_size(config) == 4
    odd = small_config("model.logit_shift=True")  # a checkpoint written some other way: `sample` refuses it
    params_export.save_params(tmp_path / "odd", M.init_params(ModelConfig.from_config(odd.model), 0), odd)
    capsys.readouterr()
    assert main(["sample", f"--checkpoint={tmp_path / 'odd'}", "--prompt=ab", "--gen-length=4", "--steps=4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "has none: import or train it so" in err


@pytest.mark.parametrize("shift", [False, True])
def test_dense_block_diffusion_model_exports_in_the_llada_format_with_its_block_size(tmp_path, shift):
    config = small_config("train.objective=block_diffusion", "train.block_size=4", f"model.logit_shift={shift}")
    params = M.init_params(ModelConfig.from_config(config.model), 0)
    params_export.save_params(tmp_path / "ckpt", params, config)
    hf_export.to_hf(tmp_path / "ckpt", tmp_path / "hf", dtype="float32")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "llada" and hf["block_size"] == 4 and hf.get("logit_shift", False) == shift
    (tmp_path / "hf" / "llada_jax_config.json").unlink()  # as a foreign folder: config.json alone decides
    hf_import.from_hf(tmp_path / "hf", tmp_path / "back", small_config())
    _, back = params_export.load_params(tmp_path / "back")
    assert back.train.objective == "block_diffusion" and back.train.block_size == 4
    assert config_lib.decode_block_size(back) == 4 and back.model.logit_shift == shift


def test_our_ar_baseline_comes_back_causal_and_an_override_keeps_any_ar_model_causal(tmp_path):
    model, folder = hf_model(tmp_path, "llama")
    hf_import.from_hf(folder, tmp_path / "kept", small_config(), ["--config.model.causal=true"])
    params, config = params_export.load_params(tmp_path / "kept")
    assert config.model.causal and config.train.objective == "ar"
    assert np.abs(our_logits(params, config, TOKENS) - hf_logits(model, TOKENS)).max() < 1e-4


def test_formats_registry_matches_the_config_names():
    dense = {name for name, fmt in formats.FORMATS.items() if "experts" not in fmt.OPTIONS}
    assert dense == set(config_lib.HF_FORMATS)  # model.hf_format names a dense format (a MoE's is its family's)


@pytest.mark.parametrize("name, changes, fragment", [
    ("qwen3", {"attention_bias": True}, "attention_bias=true"),
    ("qwen2", {"use_sliding_window": True}, "sliding-window attention"),
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
])
def test_ar_configs_the_model_cannot_represent_fail_with_one_sentence(tmp_path, name, changes, fragment):
    _, folder = hf_model(tmp_path, name)
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(hf, **changes)))
    with pytest.raises(ConfigError) as err:
        hf_import.from_hf(folder, tmp_path / "ckpt", small_config())
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_model_without_the_formats_required_option_is_refused(tmp_path):
    config = small_config("model.hf_format=qwen2")  # Qwen2 attention always has q/k/v biases
    params_export.save_params(tmp_path / "ckpt", M.init_params(ModelConfig.from_config(config.model), 0), config)
    with pytest.raises(ConfigError, match="the qwen2 format needs a model with qkv_bias"):
        hf_export.to_hf(tmp_path / "ckpt", tmp_path / "hf")
