"""Trainer: the sharded train state and the compiled train/eval steps for a config on a mesh.

One `jax.jit` with explicit in/out shardings and a donated state runs the whole step (step.py); params and
optimizer state are created directly in their shards. The same code runs on one CPU device and on a pod
slice; only the mesh differs.
"""
from __future__ import annotations

import copy
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llada_jax import sharding
from llada_jax.config import ModelConfig, decode_block_size
from llada_jax.models import attention
from llada_jax.models import registry as model_lib
from llada_jax.objectives import registry as objectives
from llada_jax.training.optimizer import make_optimizer
from llada_jax.training.step import TrainState, eval_step, train_step
from llada_jax.utils import compile_cache


class Trainer:
    """Builds the sharded state and the compiled step for a config on a mesh."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        platform = mesh.devices.flat[0].platform
        self.model_cfg = model_lib.for_platform(ModelConfig.from_config(config.model), platform)
        m = self.model_cfg
        self.objective = objectives.get(config.train.objective)
        self.attention_kernel, self.attention_note = attention.startup_kernel(
            m.attention, length=self.attention_length(), head_dim=m.head_dim, dtype=m.dtype,
            platform=platform, block_size=m.attention_block)
        self.graphdef, abstract_params, self.param_names = model_lib.split_model(
            model_lib.abstract_model(self.model_cfg))
        self.tx, self.schedule = make_optimizer(config.optimizer, config.train.steps)
        param_sh = sharding.tree_shardings(mesh, self.param_names, abstract_params)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_sh = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, param_sh,
            transform_non_params=lambda _: sharding.replicated(mesh),
        )
        self.state_shardings = TrainState(step=sharding.replicated(mesh), params=param_sh, opt_state=opt_sh)
        self.abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                         opt_state=abstract_opt)
        batch_sh = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self._steps = {}  # block size (None: the objective has none) -> the jitted step for it
        # eval scores with the block size the run ends at, the one sample and score use (config.decode_block_size)
        final = decode_block_size(config)
        eval_config = config if final is None else self._config_for(final)
        self._eval = jax.jit(
            lambda params, batch, index, draw, draws: eval_step(self.graphdef, eval_config, params, batch, index,
                                                                draw, draws),
            in_shardings=(param_sh, batch_sh, None, None), out_shardings=rep, static_argnums=4)

    def attention_length(self) -> int:
        """Columns the step's attention runs over: seq_len, or twice that when a block size below it puts the noisy
        and clean rows side by side (block diffusion)."""
        t = self.config.train
        sizes = self.objective.block_sizes(t) if self.objective.block_sizes is not None else []
        return 2 * t.seq_len if sizes and min(sizes) < t.seq_len else t.seq_len

    def block_size_at(self, step: int | None) -> int | None:
        """The block size step `step` (0-based) trains with; None for objectives without blocks. Without a step
        (benchmarks), train.block_size."""
        if self.objective.block_size_at is None:
            return None
        if step is None:
            return self.objective.block_size_at(self._config_for(None).train, 0)
        return self.objective.block_size_at(self.config.train, step)

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one Trainer per run; a handful of sizes
    def _config_for(self, block_size: int | None):
        """The config a step variant traces with: train.block_size set to its size (None: train.block_size) and
        no schedule, so the objective sees one fixed size."""
        config = copy.deepcopy(self.config)
        config.train.block_schedule = ""
        if block_size is not None:
            config.train.block_size = block_size
        return config

    def compiled_step(self, block_size: int | None):
        """The jitted step for a block size (made on first use): a curriculum compiles once per distinct size, since
        the size fixes the shapes (one stream or two) and the attention layout."""
        if block_size not in self._steps:
            config = self.config if block_size is None else self._config_for(block_size)
            self._steps[block_size] = jax.jit(
                lambda state, batch: train_step(self.graphdef, config, self.tx, self.schedule, state, batch),
                in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
                out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                donate_argnums=0,
            )
        return self._steps[block_size]

    def has_compiled(self, block_size: int | None) -> bool:
        return block_size in self._steps

    def sharded_abstract_state(self) -> TrainState:
        """The state's shapes with this mesh's shardings: the restore target (resharding on the fly)."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def state_from_params(self, params) -> TrainState:
        """Step 0 with fresh optimizer state around given params (SFT or a new run from a checkpoint)."""
        with jax.set_mesh(self.mesh):
            return jax.jit(
                lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.tx.init(p)),
                in_shardings=(self.state_shardings.params,), out_shardings=self.state_shardings,
            )(params)

    def init_state(self) -> TrainState:
        """Params and optimizer state created directly in their shards (never whole on one device)."""
        cfg, seed = self.model_cfg, self.config.train.seed

        def init():
            params = model_lib.init_params(cfg, seed)
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        with jax.set_mesh(self.mesh):
            return jax.jit(init, out_shardings=self.state_shardings)()

    def trace_step(self, block_size: int | None = None):
        """The step traced for abstract inputs (shapes only, nothing allocated): its jaxpr holds every array's
        shape, for checks before an ahead-of-time compile. For a block curriculum the default is its smallest block
        size (two streams: the costliest step)."""
        t = self.config.train
        if block_size is None and self.objective.block_sizes is not None:
            block_size = min(self.objective.block_sizes(t))
        rows = lambda dtype: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), dtype,  # noqa: E731
                                                  sharding=sharding.batch_sharding(self.mesh))
        batch = {"tokens": rows(jnp.int32)}
        batch.update({name: rows(dtype) for name, dtype in objectives.get(t.objective).batch_fields.items()})
        with jax.set_mesh(self.mesh):
            return self.compiled_step(block_size).trace(self.sharded_abstract_state(), batch)

    def compile_step(self, traced=None):
        """Ahead-of-time compile for abstract inputs (of `traced`, else traced now): the pre-flight check reads
        its memory analysis. A step for devices this process cannot run on (a TPU topology described from a CPU
        machine) stays out of the persistent compilation cache, which could not load it back."""
        traced = traced or self.trace_step()
        compile_only = self.mesh.devices.flat[0] not in jax.devices()
        with jax.set_mesh(self.mesh), compile_cache.uncached(compile_only):
            return traced.lower().compile()

    def step(self, state: TrainState, batch, step: int | None = None) -> tuple[TrainState, dict]:
        """One train step; `step` (0-based, the loop's count) picks the block size of a curriculum."""
        with jax.set_mesh(self.mesh):
            return self.compiled_step(self.block_size_at(step))(state, batch)

    def eval_losses(self, params, batches, draws: int = 1) -> list[float]:
        """Loss of every (held-out batch, noise draw) pair: nats/token (the ELBO bound for MDM, NLL for AR)."""
        with jax.set_mesh(self.mesh):
            arrays = [sharding.global_batch(b, self.mesh) for b in batches]
            losses = [self._eval(params, a, i, d, draws)["loss"] for i, a in enumerate(arrays) for d in range(draws)]
        return [float(x) for x in jax.device_get(losses)]

    def evaluate(self, params, batches) -> float:
        """Mean eval loss over fixed held-out batches (one fixed noise draw each)."""
        return float(np.mean(self.eval_losses(params, batches))) if batches else math.nan
