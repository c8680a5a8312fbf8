"""The device mesh and the one table that maps logical axis names to mesh axes.

Model code names array dimensions logically ("embed", "mlp", "heads", "vocab", "batch"); this file alone
maps them to the mesh axes (data, fsdp, expert, tensor), whose sizes config.py's mesh section works out. The same
code runs on 1 CPU device and on a pod slice: only the mesh shape changes.

Expert parallelism: `expert` splits a mixture of experts' experts ("experts") and, like data, the batch; weights
without an experts dimension are sharded over it like FSDP (after fsdp), so no device holds a copy the others
have. At expert=1 (every dense model) every spec is what it was before the axis existed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llada_jax.config import MESH_AXES, ConfigError, mesh_shapes

# logical name -> mesh axis (or tuple of axes, or None for replicated).
LOGICAL_AXIS_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp", "expert"),
    "length": None,
    "act_embed": None,
    "vocab": "tensor",
    "embed": ("fsdp", "expert"),
    "experts": "expert",  # the experts dimension of stacked expert weights
    "routes": None,  # a router's output dimension (one score per expert: small, kept whole)
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
}


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over all devices (or the given ones) with Auto axes: GSPMD propagates from our annotations.

    With DCN factors the mesh is hybrid: each axis is split into an across-slice part (slow data-center
    network) and a within-slice part (fast ICI), so e.g. data parallelism spans slices and FSDP stays inside.
    Without several TPU slices, processes play the part of slices (GPU clusters: DCN = between hosts).
    """
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = mesh_shapes(mesh_cfg, len(devices))
    ici_shape = tuple(ici[a] for a in MESH_AXES)
    dcn_shape = tuple(dcn[a] for a in MESH_AXES)
    if math.prod(dcn_shape) > 1:
        from jax.experimental import mesh_utils

        slices = {getattr(d, "slice_index", 0) for d in devices}
        by_process = len(slices) == 1  # no multi-slice hardware (e.g. CPU or GPU hosts): processes are granules
        granules = {d.process_index for d in devices} if by_process else slices
        if len(granules) != math.prod(dcn_shape):
            raise ConfigError(
                f"mesh dcn factors {dcn} ask for {math.prod(dcn_shape)} slices but the job has {len(granules)} "
                f"{'processes' if by_process else 'slices'}; set dcn_* to multiply to that number"
            )
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=by_process)
        return Mesh(grid, MESH_AXES, axis_types=auto)
    if devices == list(jax.devices()):  # let JAX order devices for the physical topology (ICI rings on TPU)
        return jax.make_mesh(ici_shape, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(ici_shape), MESH_AXES, axis_types=auto)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh=None) -> P:
    """PartitionSpec for a tuple of logical names.

    With `shape` and `mesh`, a dimension that the mapped mesh axes do not divide is replicated instead
    (e.g. a 259-entry byte vocabulary over tensor=2); a mesh axis is used at most once per array.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical):
        if name is not None and name not in LOGICAL_AXIS_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in sharding.LOGICAL_AXIS_RULES")
        target = LOGICAL_AXIS_RULES.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and shape[dim] % math.prod(mesh.shape[a] for a in axes):
                axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def named_sharding(mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh))


def tree_shardings(mesh: Mesh, logical_tree, abstract_tree):
    """Shardings for a tree of arrays given a same-structured tree of logical-name tuples."""
    return jax.tree.map(
        lambda names, x: named_sharding(mesh, names, x.shape),
        logical_tree,
        abstract_tree,
        is_leaf=lambda n: isinstance(n, tuple),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return named_sharding(mesh, ("batch",) + ("length",) * (ndim - 1))


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Activation sharding hint; a no-op outside a mesh context (plain single-device use)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))


def shard_count(logical: Sequence[str | None], shape: Sequence[int]) -> int:
    """Into how many pieces the current mesh context splits an array with these logical names (1 outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    spec = logical_to_spec(logical, shape, mesh)
    axes = [a for part in spec if part is not None for a in ((part,) if isinstance(part, str) else part)]
    return math.prod(mesh.shape[a] for a in axes)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into global arrays sharded over the batch axes.

    Every process passes its own rows (global_batch_size / process_count of them); the result is one
    logical array spanning all hosts, as the jitted step expects.
    """
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in local.items()
    }
