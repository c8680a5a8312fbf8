"""launch/ scripts print the exact commands in --dry-run; the pre-flight check reports real memory figures."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from llada_jax.cli import main

from helpers import ROOT, SMALL_MODEL, TINY


def dry_run(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args, "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_tpu_vm_lifecycle_commands():
    common = ["--name=llada", "--zone=us-east5-a", "--project=proj"]
    create = shlex.split(dry_run("tpu_vm.py", "create", *common, "--accelerator=v5p-128", "--spot"))
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert {"--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", "--node-id=llada", "--spot",
            "--project=proj"} <= set(create)

    multi = shlex.split(dry_run("tpu_vm.py", "create", *common, "--accelerator=v6e-256", "--slices=2"))
    assert "--node-count=2" in multi and "--runtime-version=v2-alpha-tpuv6e" in multi

    train = dry_run("tpu_vm.py", "train", *common, "--config=configs/llada_1b.py", "--workdir=gs://b/run", "--",
                    "--config.train.steps=10").strip().splitlines()
    assert len(train) == 1
    cmd = shlex.split(train[0])
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "llada"] and "--worker=all" in cmd
    remote = next(c for c in cmd if c.startswith("--command="))[len("--command="):]
    assert shlex.split(remote.split("&&")[1].split(">")[0]) == [
        "nohup", "llada-jax", "train", "--config=configs/llada_1b.py", "--workdir=gs://b/run", "--config.train.steps=10"]

    stop = dry_run("tpu_vm.py", "stop", *common, "--slices=2").strip().splitlines()
    assert [shlex.split(line)[5] for line in stop] == ["llada-0", "llada-1"]
    assert all("--command=pkill -TERM -f 'llada-jax train' || true" in shlex.split(line) for line in stop)
    assert "--worker=0" in dry_run("tpu_vm.py", "logs", *common)
    assert shlex.split(dry_run("tpu_vm.py", "delete", *common))[3:6] == ["queued-resources", "delete", "llada"]


def test_tpu_vm_rejects_local_workdir_and_unknown_accelerator():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "train", "--name=x", "--zone=z",
                           "--workdir=/tmp/x", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode != 0 and "gs://" in proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "create", "--name=x", "--zone=z",
                           "--accelerator=v9-8", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown accelerator type 'v9-8'" in proc.stderr


def test_gke_jobset_for_two_v5p_slices():
    out = dry_run("gke_jobset.py", "--name=run", "--image=reg/llada:1", "--accelerator=v5p-128", "--slices=2",
                  "--workdir=gs://b/run", "--", "--config.mesh.dcn_data=2")
    assert "replicas: 2" in out and "parallelism: 16" in out  # 64 chips / 4 per host
    assert "cloud.google.com/gke-tpu-topology: 4x4x4" in out and "google.com/tpu: 4" in out
    command = next(line for line in out.splitlines() if "command:" in line)
    assert json.loads(command.split("command:")[1])[2] == \
        "llada-jax train --config=configs/llada_1b.py --workdir=gs://b/run --config.mesh.dcn_data=2"
    assert out.strip().splitlines()[-1] == "kubectl apply -f jobset.yaml"


def test_gpu_cluster_paths():
    slurm = dry_run("gpu_cluster.py", "slurm", "--nodes=4", "--workdir=/shared/run")
    assert "#SBATCH --nodes=4" in slurm and "#SBATCH --signal=TERM@300" in slurm
    assert "srun llada-jax train --config=configs/llada_1b.py --workdir=/shared/run" in slurm
    hosts = dry_run("gpu_cluster.py", "hosts", "--hosts=g0,g1", "--workdir=/shared/run").strip().splitlines()
    assert [shlex.split(h)[1] for h in hosts] == ["g0", "g1"]
    assert "--config.distributed.coordinator_address=g0:8476" in hosts[1]
    assert "--config.distributed.process_id=1" in hosts[1] and "--config.distributed.num_processes=2" in hosts[1]


def test_preflight_reports_sharded_memory(capsys):
    overrides = [f"--config.{o}" for o in SMALL_MODEL]
    assert main(["preflight", f"--config={TINY}", "--json", *overrides, "--config.mesh.fsdp=8"]) == 0
    fsdp8 = json.loads(capsys.readouterr().out)
    assert main(["preflight", f"--config={TINY}", "--json", *overrides, "--config.mesh.fsdp=1",
                 "--config.mesh.data=8"]) == 0
    replicated = json.loads(capsys.readouterr().out)
    assert fsdp8["mesh"] == {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1} and fsdp8["temp_bytes"] > 0
    # FSDP splits params and optimizer state 8 ways; data parallelism keeps a full copy per device
    assert replicated["arguments_bytes"] > 4 * fsdp8["arguments_bytes"]


def test_preflight_unknown_topology_is_one_line(capsys):
    assert main(["preflight", f"--config={TINY}", "--topology=v5q:9x9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot describe TPU topology 'v5q:9x9'" in err and "\n" not in err
