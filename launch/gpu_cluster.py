#!/usr/bin/env python3
"""GPU clusters: one process per node, all running the same `llada-jax train`.

Either an sbatch script for SLURM (JAX reads the job from SLURM's environment), or, with --hosts, the
per-host commands for a cluster without a scheduler (process 0's host is the coordinator):

    python launch/gpu_cluster.py slurm --nodes=4 --gpus-per-node=8 --config=configs/llada_8b.py --workdir=/shared/run --dry-run
    python launch/gpu_cluster.py hosts --hosts=gpu0,gpu1 --config=configs/llada_1b.py --workdir=/shared/run --dry-run

Standard library only.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from launch_args import split_overrides


def train_command(args) -> list[str]:
    return ["llada-jax", "train", f"--config={args.config}", f"--workdir={args.workdir}", *args.overrides]


def sbatch_script(args) -> str:
    return f"""#!/bin/bash
#SBATCH --job-name={args.name}
#SBATCH --nodes={args.nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={args.gpus_per_node}
#SBATCH --signal=TERM@300
#SBATCH --output={args.name}-%j.log
# One task per node; JAX's SLURM detection makes task 0 the coordinator. SIGTERM 5 minutes before the
# time limit makes every process save the same step; resubmitting resumes from it.
srun {shlex.join(train_command(args))}
"""


def host_commands(args) -> list[list[str]]:
    hosts = [h for h in args.hosts.split(",") if h]
    coordinator = f"{hosts[0]}:{args.port}"
    out = []
    for pid, host in enumerate(hosts):
        remote = shlex.join(train_command(args) + [
            f"--config.distributed.coordinator_address={coordinator}",
            f"--config.distributed.num_processes={len(hosts)}", f"--config.distributed.process_id={pid}"])
        out.append(["ssh", host, f"cd {args.remote_dir} && nohup {remote} > llada_train.log 2>&1 &"])
    return out


def main(argv=None) -> int:
    argv, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["slurm", "hosts"])
    parser.add_argument("--name", default="llada-jax")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--hosts", default="", help="comma-separated host names (mode hosts)")
    parser.add_argument("--port", type=int, default=8476)
    parser.add_argument("--remote-dir", default="~/llada_jax")
    parser.add_argument("--config", default="configs/llada_1b.py")
    parser.add_argument("--workdir", required=True, help="a folder every node reaches (shared FS or gs://)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.overrides = overrides
    if args.mode == "hosts" and not args.hosts:
        parser.error("mode hosts needs --hosts=host0,host1,...")
    if args.mode == "slurm":
        script = sbatch_script(args)
        path = f"{args.name}.sbatch"
        if args.dry_run:
            print(script)
            print(shlex.join(["sbatch", path]))
            return 0
        with open(path, "w") as f:
            f.write(script)
        return subprocess.call(["sbatch", path])
    for cmd in host_commands(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run and subprocess.call(cmd):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
