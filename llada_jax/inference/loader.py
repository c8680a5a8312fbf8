"""One way into a checkpoint for every consumer (`sample`, `score`, `eval`, the demo): the mesh, the run's
config, the vocabulary, then the params resharded onto that mesh and cast once to the serving dtype.

Opening is cheap (a JSON read and a tokenizer), so commands check their flags against the model (lengths,
vocabulary) before `load` spends seconds restoring and resharding the params.
"""
from __future__ import annotations

from llada_jax import sharding
from llada_jax.checkpoints import locate, params_export
from llada_jax.config import ConfigError, ModelConfig, apply_override, decode_block_size, require_block_decoding
from llada_jax.data.vocab import get_vocabulary
from llada_jax.inference import serving_params
from llada_jax.models import attention
from llada_jax.models import registry as model_lib


def inference_mesh(config, overrides=()):
    """A mesh for the devices present: FSDP over all of them, or the --config.mesh.* overrides given.

    The training mesh is not reused: a checkpoint written on 8 devices must load on a laptop's one.
    Params are resharded onto this mesh on load.
    """
    config = config.copy_and_resolve_references()
    config.mesh.update({"data": 1, "fsdp": -1, "expert": 1, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1, "dcn_expert": 1,
                        "dcn_tensor": 1})
    for item in overrides:
        if not item.startswith("--config.mesh."):
            raise ConfigError(f"{item.split('=')[0]} does not apply here; the model comes from the checkpoint "
                              "and only --config.mesh.* overrides are accepted")
        apply_override(config, item)
    return sharding.make_mesh(config.mesh)


class InferenceModel:
    """What a decoder or scorer needs from a checkpoint. `graphdef` and `params` exist once `load` has run."""

    def __init__(self, checkpoint, mesh_overrides=(), *, mesh=None):
        self.directory = locate.resolve(checkpoint)
        self.config = locate.read_config(self.directory)
        self.mesh = mesh if mesh is not None else inference_mesh(self.config, mesh_overrides)
        self.vocab = get_vocabulary(self.config)
        self.graphdef = self.params = None
        m = ModelConfig.from_config(self.config.model)
        # what the sampler's full passes run on this mesh (explicit requests that cannot run stop here)
        self.attention_kernel, self.attention_note = attention.startup_kernel(
            m.attention, length=m.max_seq_len, head_dim=m.head_dim, dtype=m.dtype,
            platform=self.mesh.devices.flat[0].platform, block_size=m.attention_block, strict=False)

    @property
    def max_len(self) -> int:
        return int(self.config.model.max_seq_len)

    @property
    def mask_id(self) -> int:
        return int(self.config.model.mask_token_id)

    @property
    def block_size(self) -> int | None:
        """The block size a block-diffusion checkpoint decodes and is scored with; None for a full-sequence one."""
        require_block_decoding(self.config, f"{self.directory} has none: import or train it so")
        return decode_block_size(self.config)

    def load(self, param_dtype: str | None = "auto") -> "InferenceModel":
        """Restores the params onto the mesh, cast once to --param-dtype (auto: bfloat16 on GPU/TPU; None: as
        stored)."""
        dtype = None if param_dtype is None else serving_params.serving_dtype(param_dtype)
        params = params_export.restore_params(self.directory, self.config, self.mesh)
        cfg = model_lib.for_platform(ModelConfig.from_config(self.config.model), self.mesh.devices.flat[0].platform)
        self.graphdef = model_lib.graphdef(cfg)
        self.params = serving_params.cast_params(params, dtype, keep=model_lib.FLOAT32_PARAMS)
        return self
