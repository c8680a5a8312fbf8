"""Starting JAX's multi-controller runtime: one Python process per host, all running the same program.

Cloud TPU VMs (and SLURM GPU clusters) describe the job in their environment, so `jax.distributed.initialize()`
needs no arguments there. Elsewhere (a GPU cluster without SLURM, tests on loopback) the coordinator address,
process count and process id come from the config (`distributed.*`) or the LLADA_COORDINATOR_ADDRESS,
LLADA_NUM_PROCESSES and LLADA_PROCESS_ID environment variables. Must run before anything touches a device.
"""
from __future__ import annotations

import os

import jax

from llada_jax.config import ConfigError


def _cluster_environment() -> str:
    """Name of a multi-host environment JAX can auto-detect, or '' for a single host."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    return ""


def initialize(dist_cfg) -> bool:
    """Initialises jax.distributed when the job spans several processes; returns whether it did."""
    address = dist_cfg.coordinator_address or os.environ.get("LLADA_COORDINATOR_ADDRESS", "")
    num = int(dist_cfg.num_processes or os.environ.get("LLADA_NUM_PROCESSES", 0))
    pid = int(dist_cfg.process_id if dist_cfg.process_id >= 0 else os.environ.get("LLADA_PROCESS_ID", -1))
    if address:
        if num < 1 or not 0 <= pid < num:
            raise ConfigError(
                f"distributed.coordinator_address={address!r} needs distributed.num_processes >= 1 and "
                f"0 <= distributed.process_id < num_processes (got {num} and {pid})"
            )
        if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                                   initialization_timeout=int(dist_cfg.timeout_s))
        return True
    if dist_cfg.auto and _cluster_environment():
        jax.distributed.initialize()
        return True
    return False
