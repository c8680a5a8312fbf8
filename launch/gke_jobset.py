#!/usr/bin/env python3
"""A JobSet for llada_jax training on GKE TPU node pools (one Job per slice, one pod per TPU host).

    python launch/gke_jobset.py --name=llada-1b --image=REGISTRY/llada-jax:latest --accelerator=v5p-128 \
        --slices=2 --config=configs/llada_1b.py --workdir=gs://my-bucket/llada-1b --dry-run -- --config.mesh.dcn_data=2

Prints the JobSet YAML and the kubectl command; without --dry-run it applies it. JobSet sets the
coordinator for JAX (via the TPU runtime's environment on GKE), so pods need no coordinator flags.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

from launch_args import split_overrides

# accelerator -> (GKE accelerator label, chips per host, topology for the given chip count)
CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5litepod": 4, "v6e": 4}
GKE_LABEL = {"v4": "tpu-v4-podslice", "v5p": "tpu-v5p-slice", "v5litepod": "tpu-v5-lite-podslice",
             "v6e": "tpu-v6e-slice"}
TOPOLOGIES = {  # chips -> topology string, as GKE node pools name them
    "v5p": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"},
    "v4": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"},
    "v5litepod": {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    "v6e": {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}


def slice_shape(accelerator: str) -> tuple[str, int, int, str]:
    """(generation, chips, hosts, topology); v4/v5p names count TensorCores (2 per chip), v5e/v6e count chips."""
    generation, _, count = accelerator.rpartition("-")
    if generation not in CHIPS_PER_HOST or not count.isdigit():
        raise SystemExit(f"unknown accelerator type {accelerator!r}; use e.g. v5p-128, v6e-256, v5litepod-16")
    chips = int(count) // (2 if generation in ("v4", "v5p") else 1)
    if chips not in TOPOLOGIES[generation]:
        raise SystemExit(f"{accelerator} ({chips} chips) has no GKE topology here; use one of {sorted(TOPOLOGIES[generation])} chips")
    return generation, chips, max(chips // CHIPS_PER_HOST[generation], 1), TOPOLOGIES[generation][chips]


def jobset_yaml(args) -> str:
    generation, chips, hosts, topology = slice_shape(args.accelerator)
    train = shlex.join(["llada-jax", "train", f"--config={args.config}", f"--workdir={args.workdir}", *args.overrides])
    per_host = min(chips, CHIPS_PER_HOST[generation])
    return f"""apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {args.name}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: {args.max_restarts}
  replicatedJobs:
  - name: slice
    replicas: {args.slices}
    template:
      spec:
        parallelism: {hosts}
        completions: {hosts}
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: {args.grace_seconds}
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: {GKE_LABEL[generation]}
              cloud.google.com/gke-tpu-topology: {topology}
            containers:
            - name: llada-jax
              image: {args.image}
              command: ["bash", "-c", {json.dumps(train)}]
              resources:
                limits:
                  google.com/tpu: {per_host}
"""


def main(argv=None) -> int:
    argv, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--image", required=True, help="container image with llada-jax and jax[tpu] installed")
    parser.add_argument("--accelerator", default="v5p-128")
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--config", default="configs/llada_1b.py")
    parser.add_argument("--workdir", required=True, help="gs:// path shared by all pods")
    parser.add_argument("--max-restarts", type=int, default=3, help="JobSet restarts; each resumes from the latest checkpoint")
    parser.add_argument("--grace-seconds", type=int, default=300, help="SIGTERM-to-kill time: enough to save a checkpoint")
    parser.add_argument("--out", default="jobset.yaml")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.overrides = overrides
    text = jobset_yaml(args)
    cmd = ["kubectl", "apply", "-f", args.out]
    if args.dry_run:
        print(text)
        print(shlex.join(cmd))
        return 0
    with open(args.out, "w") as f:
        f.write(text)
    print(shlex.join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
