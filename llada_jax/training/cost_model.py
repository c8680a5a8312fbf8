"""XLA's own cost model of the compiled train step: FLOPs, bytes accessed and modeled seconds per step, and the
modeled MFU, counted correctly through the scanned layers and the chunked output head.

XLA's cost analysis counts the body of a loop once: the lax.scan over layers, the scan over head chunks and
the scan over micro-batches. So the step is compiled twice more, with the layers unrolled (scan_layers=False)
at 1 and at 2 layers, the head in one chunk and one micro-batch; a layer costs the difference, and the whole
step is L1 + (n - 1)(L2 - L1), times the micro-batches. The splash attention kernel is a custom call outside
the cost model, so modeled times leave out the attention core (for every system compared this way alike).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from llada_jax.config import ModelConfig
from llada_jax.models import flops
from llada_jax.utils import chips

ATTENTION_NOTE = "the attention kernel (splash) is a custom call outside XLA's cost model: modeled times exclude it"


@dataclasses.dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float
    seconds: float

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.flops - other.flops, self.bytes - other.bytes, self.seconds - other.seconds)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.seconds + other.seconds)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.seconds * k)


def measure(compiled) -> Cost:
    """One device's totals from a compiled program (loop bodies counted once, as XLA does)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return Cost(float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0)),
                float(analysis.get("optimal_seconds", 0.0)))


def probe_config(config, n_layers: int, devices: int) -> ml_collections.ConfigDict:
    """The config with `n_layers` unrolled layers, one micro-batch and the head in one chunk per device."""
    probe = ml_collections.ConfigDict(config.to_dict())
    t = probe.train
    t.global_batch_size = t.global_batch_size // t.grad_accum_steps
    t.grad_accum_steps = 1
    probe.model.n_layers = n_layers
    probe.model.scan_layers = False
    probe.model.loss_chunk_tokens = max(1, t.global_batch_size * t.seq_len // devices)
    return probe


def modeled_step(config, mesh, compile_step) -> dict:
    """Per-device modeled figures of the full step; `compile_step(config, mesh)` returns a compiled step."""
    devices = mesh.devices.size
    one = measure(compile_step(probe_config(config, 1, devices), mesh))
    two = measure(compile_step(probe_config(config, 2, devices), mesh))
    layer, accum, n = two - one, config.train.grad_accum_steps, config.model.n_layers
    step = (one + layer * (n - 1)) * accum
    cfg = ModelConfig.from_config(config.model)
    t = config.train
    model_flops = flops.flops_per_token(cfg, t.seq_len) * t.global_batch_size * t.seq_len / devices
    peak = chips.peak_tflops(mesh.devices.flat[0].device_kind)
    return {
        "modeled_step_s": step.seconds, "modeled_bytes": step.bytes, "modeled_flops": step.flops,
        "modeled_layer_s": layer.seconds, "modeled_layer_bytes": layer.bytes, "modeled_layer_flops": layer.flops,
        "modeled_head_and_rest_s": (one - layer).seconds, "modeled_head_and_rest_flops": (one - layer).flops,
        "model_flops_per_device": model_flops,
        "modeled_mfu": model_flops / step.seconds / (peak * 1e12) if peak and step.seconds > 0 else None,
        "cost_model_note": ATTENTION_NOTE,
    }


def format_lines(r: dict) -> list[str]:
    """The preflight report's lines for the modeled figures."""
    if "modeled_step_s" not in r:
        return []
    mfu = f"{100 * r['modeled_mfu']:.1f}%" if r.get("modeled_mfu") is not None else "n/a (unknown chip peak)"
    return [
        f"modeled step       {r['modeled_step_s']:.3f} s, {r['modeled_bytes'] / 1e9:,.1f} GB accessed, "
        f"{r['modeled_flops'] / 1e12:,.1f} TFLOP per device (XLA's cost model, layers counted one by one)",
        f"modeled layer      {r['modeled_layer_s'] * 1e3:.1f} ms, {r['modeled_layer_bytes'] / 1e9:.2f} GB, "
        f"{r['modeled_layer_flops'] / 1e12:.2f} TFLOP; head, embedding and optimizer "
        f"{r['modeled_head_and_rest_s'] * 1e3:.1f} ms, {r['modeled_head_and_rest_flops'] / 1e12:.2f} TFLOP",
        f"modeled MFU        {mfu} (6N + attention FLOPs over modeled time and the chip's peak)",
        f"                   note: {r['cost_model_note']}",
    ]
