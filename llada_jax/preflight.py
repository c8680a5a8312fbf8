"""Pre-flight check: compile the train step for a config and report per-device memory before paying for a pod.

The step is compiled ahead of time for abstract inputs on the mesh the run would use, so nothing is
allocated; XLA's memory analysis of the executable gives the bytes each device needs (arguments = params,
optimizer state and batch; temporaries = activations and workspace). With a TPU topology name and libtpu
installed, the same compile runs for that topology from a CPU machine.
"""
from __future__ import annotations

import jax

from llada_jax import sharding
from llada_jax.config import ConfigError, validate
from llada_jax.train import Trainer


def topology_devices(name: str):
    """Devices of a named TPU topology (e.g. 'v5p:4x4x4'), for ahead-of-time compiles without the hardware."""
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ConfigError(
            f"cannot describe TPU topology {name!r} on this machine ({type(e).__name__}); AOT compiles for TPU need "
            "libtpu (pip install 'jax[tpu]') and a name like 'v5p:4x4x4', or run the check on the TPU VM itself"
        ) from None


def analyse(config, devices=None) -> dict:
    devices = list(jax.devices() if devices is None else devices)
    validate(config, len(devices))
    mesh = sharding.make_mesh(config.mesh, devices)
    compiled = Trainer(config, mesh).compile_step()
    mem = compiled.memory_analysis()
    report = {
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "arguments_bytes": int(mem.argument_size_in_bytes),
        "outputs_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(getattr(mem, "alias_size_in_bytes", 0)),
        "code_bytes": int(getattr(mem, "generated_code_size_in_bytes", 0)),
    }
    # donated state aliases its outputs: count arguments once, plus the non-aliased outputs and temporaries
    report["peak_bytes"] = (report["arguments_bytes"] + report["outputs_bytes"] - report["alias_bytes"]
                            + report["temp_bytes"] + report["code_bytes"])
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    report["device_limit_bytes"] = int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None
    return report


def format_report(r: dict) -> str:
    gib = lambda b: f"{b / 2**30:,.3f} GiB"  # noqa: E731
    lines = [
        f"devices            {r['devices']} x {r['device_kind']}  mesh {r['mesh']}",
        f"arguments          {gib(r['arguments_bytes'])} per device (params, optimizer state, batch)",
        f"outputs            {gib(r['outputs_bytes'])} per device ({gib(r['alias_bytes'])} aliased to donated inputs)",
        f"temporaries        {gib(r['temp_bytes'])} per device (activations, gradients, workspace)",
        f"peak estimate      {gib(r['peak_bytes'])} per device",
    ]
    if r["device_limit_bytes"]:
        ok = r["peak_bytes"] <= r["device_limit_bytes"]
        lines.append(f"device memory      {gib(r['device_limit_bytes'])} -> {'fits' if ok else 'DOES NOT FIT: raise fsdp, enable remat or shrink the batch'}")
    return "\n".join(lines)
