#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for llada_jax runs: create, install, train, logs, stop, delete.

Every worker of a slice runs the same `llada-jax train` (JAX's multi-controller model); the TPU runtime
tells JAX the topology, so no coordinator flags are needed. Multi-slice runs (--slices N) use a queued
resource with N nodes; JAX then joins the slices over DCN (set mesh.dcn_data=N in the config overrides).

    python launch/tpu_vm.py create --name=llada-v5p --zone=us-east5-a --accelerator=v5p-128 --dry-run
    python launch/tpu_vm.py train  --name=llada-v5p --zone=us-east5-a --config=configs/llada_1b.py \
        --workdir=gs://my-bucket/llada-1b -- --config.train.steps=1000 --dry-run

--dry-run prints the exact gcloud commands instead of running them. Uses only the standard library.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from launch_args import split_overrides

RUNTIME_VERSIONS = {  # TPU VM software images per generation
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
REMOTE_DIR = "~/llada_jax"
LOG_FILE = "~/llada_train.log"


def runtime_for(accelerator: str) -> str:
    generation = accelerator.rsplit("-", 1)[0]
    if generation not in RUNTIME_VERSIONS:
        raise SystemExit(f"unknown accelerator type {accelerator!r}; use e.g. v4-32, v5litepod-16, v5p-128, v6e-256")
    return RUNTIME_VERSIONS[generation]


def node_names(args) -> list[str]:
    return [args.name] if args.slices == 1 else [f"{args.name}-{i}" for i in range(args.slices)]


def with_project(args, cmd: list[str]) -> list[str]:
    return cmd + ([f"--project={args.project}"] if args.project else [])


def ssh_all(args, node: str, remote: str) -> list[str]:
    return with_project(args, ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, f"--zone={args.zone}",
                               "--worker=all", f"--command={remote}"])


def commands(args) -> list[list[str]]:
    if args.action == "create":
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--zone={args.zone}",
               f"--accelerator-type={args.accelerator}", f"--runtime-version={runtime_for(args.accelerator)}"]
        cmd += [f"--node-id={args.name}"] if args.slices == 1 else [f"--node-count={args.slices}",
                                                                     f"--node-prefix={args.name}"]
        cmd += ["--spot"] if args.spot else []
        return [with_project(args, cmd)]
    if args.action == "install":
        out = []
        for node in node_names(args):
            out.append(with_project(args, ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "--worker=all",
                                           f"--zone={args.zone}", args.source, f"{node}:{REMOTE_DIR}"]))
            out.append(ssh_all(args, node, f"pip install -U 'jax[tpu]' && pip install -e {REMOTE_DIR}"))
        return out
    if args.action == "train":
        train = ["llada-jax", "train", f"--config={args.config}", f"--workdir={args.workdir}", *args.overrides]
        remote = f"cd {REMOTE_DIR} && nohup {shlex.join(train)} > {LOG_FILE} 2>&1 &"
        return [ssh_all(args, node, remote) for node in node_names(args)]
    if args.action == "logs":  # process 0 prints progress; the others stay quiet
        node = node_names(args)[0]
        return [with_project(args, ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, f"--zone={args.zone}",
                                    "--worker=0", f"--command=tail -n 100 -f {LOG_FILE}"])]
    if args.action == "stop":  # SIGTERM: every host saves the same step, then exits 0
        return [ssh_all(args, node, "pkill -TERM -f 'llada-jax train' || true") for node in node_names(args)]
    if args.action == "delete":
        return [with_project(args, ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
                                    f"--zone={args.zone}", "--force", "--quiet"])]
    raise SystemExit(f"unknown action {args.action!r}")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["create", "install", "train", "logs", "stop", "delete"])
    parser.add_argument("--name", required=True, help="queued resource / TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--accelerator", default="v5p-128", help="e.g. v5p-128, v6e-256, v5litepod-16")
    parser.add_argument("--slices", type=int, default=1, help="multi-slice: number of slices (DCN)")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--source", default=".", help="local llada_jax checkout copied to every worker")
    parser.add_argument("--config", default="configs/llada_1b.py")
    parser.add_argument("--workdir", default="", help="gs://bucket/run: checkpoints and metrics (shared by all hosts)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    own, overrides = split_overrides(list(argv))
    args = parser.parse_args(own)
    args.overrides = overrides
    if args.slices < 1:
        parser.error("--slices must be >= 1")
    if args.action == "train" and not args.workdir.startswith("gs://"):
        parser.error("--workdir must be a gs:// path that every host can reach, e.g. gs://my-bucket/llada-1b")
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    for cmd in commands(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
