"""Trainer: the sharded train state and the compiled train/eval steps for a config on a mesh.

One `jax.jit` with explicit in/out shardings and a donated state runs the whole step (step.py); params and
optimizer state are created directly in their shards. The same code runs on one CPU device and on a pod
slice; only the mesh differs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llada_jax import sharding
from llada_jax.config import ModelConfig
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
        self.attention_kernel, self.attention_note = attention.startup_kernel(
            m.attention, length=config.train.seq_len, head_dim=m.head_dim, dtype=m.dtype,
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
        self._step = jax.jit(
            lambda state, batch: train_step(self.graphdef, config, self.tx, self.schedule, state, batch),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=0,
        )
        self._eval = jax.jit(
            lambda params, batch, index, draw, draws: eval_step(self.graphdef, config, params, batch, index, draw, draws),
            in_shardings=(param_sh, batch_sh, None, None), out_shardings=rep, static_argnums=4)

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

    def trace_step(self):
        """The step traced for abstract inputs (shapes only, nothing allocated): its jaxpr holds every array's
        shape, for checks before an ahead-of-time compile."""
        t = self.config.train
        rows = lambda dtype: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), dtype,  # noqa: E731
                                                  sharding=sharding.batch_sharding(self.mesh))
        batch = {"tokens": rows(jnp.int32)}
        batch.update({name: rows(dtype) for name, dtype in objectives.get(t.objective).batch_fields.items()})
        with jax.set_mesh(self.mesh):
            return self._step.trace(self.sharded_abstract_state(), batch)

    def compile_step(self, traced=None):
        """Ahead-of-time compile for abstract inputs (of `traced`, else traced now): the pre-flight check reads
        its memory analysis. A step for devices this process cannot run on (a TPU topology described from a CPU
        machine) stays out of the persistent compilation cache, which could not load it back."""
        traced = traced or self.trace_step()
        compile_only = self.mesh.devices.flat[0] not in jax.devices()
        with jax.set_mesh(self.mesh), compile_cache.uncached(compile_only):
            return traced.lower().compile()

    def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        with jax.set_mesh(self.mesh):
            return self._step(state, batch)

    def eval_losses(self, params, batches, draws: int = 1) -> list[float]:
        """Loss of every (held-out batch, noise draw) pair: nats/token (the ELBO bound for MDM, NLL for AR)."""
        with jax.set_mesh(self.mesh):
            arrays = [sharding.global_batch(b, self.mesh) for b in batches]
            losses = [self._eval(params, a, i, d, draws)["loss"] for i, a in enumerate(arrays) for d in range(draws)]
        return [float(x) for x in jax.device_get(losses)]

    def evaluate(self, params, batches) -> float:
        """Mean eval loss over fixed held-out batches (one fixed noise draw each)."""
        return float(np.mean(self.eval_losses(params, batches))) if batches else math.nan
