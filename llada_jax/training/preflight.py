"""Pre-flight check: compile the train step for a config and report per-device memory before paying for a pod.

The step is compiled ahead of time for abstract inputs on the mesh the run would use, so nothing is
allocated; XLA's memory analysis of the executable gives the bytes each device needs (arguments = params,
optimizer state and batch; temporaries = activations and workspace). With a TPU topology name and libtpu
installed, the same compile runs for that topology from a CPU machine: those devices are not addressable,
so the device memory comes from a table of chips instead of the runtime.
"""
from __future__ import annotations

import jax

from llada_jax import sharding
from llada_jax.config import ConfigError, validate
from llada_jax.training.trainer import Trainer
from llada_jax.utils.chips import TPU_HBM_BYTES

def topology_devices(name: str):
    """Devices of a named TPU topology (e.g. 'v5p:4x4x4'), for ahead-of-time compiles without the hardware."""
    import os

    from jax.experimental import topologies

    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu otherwise probes for a TPU VM's peers
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: no chip to guard with the lockfile
    try:
        return topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ConfigError(
            f"cannot describe TPU topology {name!r} on this machine ({type(e).__name__}); AOT compiles for TPU need "
            "libtpu (pip install 'llada-jax[tpu]') and a name like 'v5p:4x4x4', or run the check on the TPU VM itself"
        ) from None


def device_memory_limit(device) -> int | None:
    """Bytes one device can hold: the runtime's figure for local devices, the chip table for TPU topologies."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - topology devices are not addressable and refuse to answer
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if getattr(device, "platform", "") == "tpu":
        return TPU_HBM_BYTES.get(device.device_kind)
    return None


def analyse(config, devices=None) -> dict:
    devices = list(jax.devices() if devices is None else devices)
    validate(config, len(devices))
    mesh = sharding.make_mesh(config.mesh, devices)
    compiled = compile_or_explain(Trainer(config, mesh))
    mem = compiled.memory_analysis()
    t = config.train
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    report = {
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "sequences_per_device": t.global_batch_size / batch_shards,
        "seq_len": t.seq_len,
        "arguments_bytes": int(mem.argument_size_in_bytes),
        "outputs_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(getattr(mem, "alias_size_in_bytes", 0)),
        "code_bytes": int(getattr(mem, "generated_code_size_in_bytes", 0)),
    }
    # donated state aliases its outputs: count arguments once, plus the non-aliased outputs and temporaries
    report["peak_bytes"] = (report["arguments_bytes"] + report["outputs_bytes"] - report["alias_bytes"]
                            + report["temp_bytes"] + report["code_bytes"])
    tokens_per_device = report["sequences_per_device"] * t.seq_len / t.grad_accum_steps
    report["temp_bytes_per_token"] = report["temp_bytes"] / tokens_per_device
    report["device_limit_bytes"] = device_memory_limit(devices[0])
    report["max_sequences_per_device"] = max_sequences(report, t.grad_accum_steps)
    return report


def compile_or_explain(trainer):
    """The compiled step; a compile-time out-of-memory (TPU compiles check HBM) becomes one ConfigError line."""
    try:
        return trainer.compile_step()
    except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type for this
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
            raise
        detail = next((line.strip() for line in text.splitlines() if "exceeds" in line or "Ran out" in line),
                      text.splitlines()[0])
        raise ConfigError(f"the step does not fit in device memory ({detail}); enable model.remat, raise "
                          "mesh.fsdp or lower train.global_batch_size") from None


def max_sequences(report: dict, grad_accum_steps: int = 1) -> int | None:
    """Largest per-device batch that fits, assuming temporaries grow linearly with the micro-batch tokens
    (activations do; workspace that does not makes this a slight under-estimate). None without a known limit."""
    limit = report["device_limit_bytes"]
    if not limit:
        return None
    fixed = report["peak_bytes"] - report["temp_bytes"]
    per_sequence = report["temp_bytes_per_token"] * report["seq_len"] / grad_accum_steps
    return max(0, int((limit - fixed) // per_sequence)) if per_sequence else None


def format_report(r: dict) -> str:
    gib = lambda b: f"{b / 2**30:,.3f} GiB"  # noqa: E731
    lines = [
        f"devices            {r['devices']} x {r['device_kind']}  mesh {r['mesh']}",
        f"batch              {r['sequences_per_device']:g} sequences of {r['seq_len']} per device",
        f"arguments          {gib(r['arguments_bytes'])} per device (params, optimizer state, batch)",
        f"outputs            {gib(r['outputs_bytes'])} per device ({gib(r['alias_bytes'])} aliased to donated inputs)",
        f"temporaries        {gib(r['temp_bytes'])} per device (activations, gradients, workspace)",
        f"bytes per token    {r['temp_bytes_per_token'] / 2**20:,.3f} MiB of temporaries per token per device",
        f"peak estimate      {gib(r['peak_bytes'])} per device",
    ]
    if r["device_limit_bytes"]:
        ok = r["peak_bytes"] <= r["device_limit_bytes"]
        lines.append(f"device memory      {gib(r['device_limit_bytes'])} -> {'fits' if ok else 'DOES NOT FIT: raise fsdp, enable remat or shrink the batch'}")
        lines.append(f"largest batch      ~{r['max_sequences_per_device']} sequences of {r['seq_len']} per device "
                     "(linear in the temporaries)")
    else:
        lines.append("device memory      unknown for this device (no runtime limit): largest batch not estimated")
    return "\n".join(lines)
