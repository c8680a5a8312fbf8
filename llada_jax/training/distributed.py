"""Starting JAX's multi-controller runtime: one Python process per host, all running the same program.

Cloud TPU VMs (and SLURM GPU clusters) describe the job in their environment, so `jax.distributed.initialize()`
needs no arguments there. Elsewhere (a GPU cluster without SLURM, tests on loopback) the coordinator address,
process count and process id come from the config (`distributed.*`) or the LLADA_COORDINATOR_ADDRESS,
LLADA_NUM_PROCESSES and LLADA_PROCESS_ID environment variables. Must run before anything touches a device.

When a peer process dies, JAX's coordination service notices after `distributed.heartbeat_timeout_s` and
aborts every other process from C++ (pages of traces that cannot be intercepted in Python); a collective
with the dead peer may fail sooner with an exception. `llada-jax train` therefore runs a multi-process job's
worker under a supervisor (supervisor.py) that turns either into one line; `await_lost_peer` is the worker's
half: on such an exception it waits for the service to name the lost process instead of printing a traceback.
"""
from __future__ import annotations

import os
import re
import sys
import time

from llada_jax.config import ConfigError

# Errors a collective or barrier raises when a peer is gone (CPU/gloo, the coordination service).
LOST_PEER_ERROR = re.compile(r"Gloo .*failed|Connection (closed|reset) by peer|heartbeat timeout|stopped sending "
                             r"heartbeats|Barrier failed")
# What the worker prints before waiting for the coordination service's verdict (supervisor.py looks for it).
LOST_PEER_MARKER = "llada-jax: a collective with another process failed"
WORKER_ENV = "LLADA_JAX_WORKER"  # set in a worker that supervisor.py started
EXIT_LOST_PEER = 75  # EX_TEMPFAIL: the job can be retried (resumed) as it is


def _cluster_environment() -> str:
    """Name of a multi-host environment JAX can auto-detect, or '' for a single host."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    return ""


def settings(dist_cfg) -> tuple[str, int, int]:
    """(coordinator address, number of processes, this process's id) from the config or the environment."""
    address = dist_cfg.coordinator_address or os.environ.get("LLADA_COORDINATOR_ADDRESS", "")
    num = int(dist_cfg.num_processes or os.environ.get("LLADA_NUM_PROCESSES", 0))
    pid = int(dist_cfg.process_id if dist_cfg.process_id >= 0 else os.environ.get("LLADA_PROCESS_ID", -1))
    return address, num, pid


def is_multiprocess(dist_cfg) -> bool:
    """Whether `initialize` would start jax.distributed (decided without importing JAX)."""
    address, num, _ = settings(dist_cfg)
    return bool(address and num > 1) or bool(dist_cfg.auto and _cluster_environment())


def heartbeat_timeout_s(dist_cfg) -> int:
    return int(dist_cfg.get("heartbeat_timeout_s", 60))


def await_lost_peer(error: BaseException, dist_cfg) -> None:
    """In a supervised worker, an exception that says a peer is gone: say so in one marker line and wait for
    the coordination service to abort this process naming the lost process (the supervisor reports it);
    exits on its own if that does not come. Returns (for the caller to re-raise) for any other error."""
    if not os.environ.get(WORKER_ENV) or not LOST_PEER_ERROR.search(str(error)):
        return
    first = (str(error).strip().splitlines() or [""])[0][:300]
    sys.stderr.write(f"{LOST_PEER_MARKER} ({type(error).__name__}: {first})\n")
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(heartbeat_timeout_s(dist_cfg) + 30)
    os._exit(EXIT_LOST_PEER)


def initialize(dist_cfg) -> bool:
    """Initialises jax.distributed when the job spans several processes; returns whether it did."""
    import jax

    address, num, pid = settings(dist_cfg)
    if address:
        if num < 1 or not 0 <= pid < num:
            raise ConfigError(
                f"distributed.coordinator_address={address!r} needs distributed.num_processes >= 1 and "
                f"0 <= distributed.process_id < num_processes (got {num} and {pid})"
            )
        if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                                   initialization_timeout=int(dist_cfg.timeout_s),
                                   heartbeat_timeout_seconds=heartbeat_timeout_s(dist_cfg))
        return True
    if dist_cfg.auto and _cluster_environment():
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s(dist_cfg))
        return True
    return False
