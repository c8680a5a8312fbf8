"""`llada-jax eval` as two JAX processes on loopback (4 CPU devices each, one 8-device mesh): each feeds its
share of every pass, process 0 alone writes results, and they equal a one-process run on 8 devices."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from helpers import ROOT, params_export  # noqa: E402
from test_eval import GEN, MC_BATCH, write_tasks  # noqa: E402
from test_multiprocess import free_port  # noqa: E402

DRIVER = """
import sys
from llada_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def eval_argv(export, tasks, output):
    return ["eval", f"--checkpoint={export}", "--tasks=local_mc,local_gen", f"--include-path={tasks}",
            "--mc-num=8", f"--mc-batch-size={MC_BATCH}", "--rows-per-pass=16", "--gen-batch-size=8",
            *[f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()], f"--output={output}", "--log-samples"]


def launch(driver, argv, n_processes, devices_each, env_extra):
    port = free_port()
    procs = []
    for pid in range(n_processes):
        extra = [] if n_processes == 1 else [
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.num_processes={n_processes}", f"--config.distributed.process_id={pid}"]
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
                   JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env_extra)
        procs.append(subprocess.Popen([sys.executable, str(driver), *argv, *extra], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def responses(results):
    return {task: [s["resps"] for s in sorted(samples, key=lambda s: s["doc_id"])]
            for task, samples in results["samples"].items()}


def test_two_processes_equal_one_process(tmp_path):
    export, tasks = params_export(tmp_path), write_tasks(tmp_path / "tasks")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    launch(driver, eval_argv(export, tasks, one), 1, 8, env)
    outs = launch(driver, eval_argv(export, tasks, two), 2, 4, env)
    assert "results written" in outs[0] and "results written" not in outs[1]  # process 0 reports
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert responses(double)["local_gen"] == responses(single)["local_gen"]
    for a, b in zip(responses(double)["local_mc"], responses(single)["local_mc"]):
        assert [r[0][0] for r in a] == pytest.approx([r[0][0] for r in b], abs=1e-4)
    assert double["results"]["local_mc"]["acc,none"] == single["results"]["local_mc"]["acc,none"]
