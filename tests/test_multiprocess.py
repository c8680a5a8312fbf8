"""Two JAX processes on loopback, 4 CPU devices each, train one fsdp=8 model together (with a checkpoint
save and resume in between) and agree with a single process that has all 8 devices."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llada_jax.checkpoints import params_export

from helpers import ROOT, SMALL_MODEL, TINY, xla_flags

DRIVER = """
import faulthandler, json, signal, sys
faulthandler.register(signal.SIGUSR1)
from llada_jax.training import distributed
from llada_jax.training import loop
from llada_jax.config import load_config

config = load_config(sys.argv[1], sys.argv[4:])
distributed.initialize(config.distributed)
import jax
batches, _, _ = loop.build_data(config)
rows = next(batches)["tokens"].tolist()
summary = loop.run(config, sys.argv[2], quiet=True, stop_after=int(sys.argv[3]) or None)
print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                              "devices": jax.device_count(), "summary": summary, "rows": rows}))
"""

OVERRIDES = [f"config.{o}" for o in SMALL_MODEL] + [
    "config.train.steps=4", "config.mesh.fsdp=-1", "config.checkpoint.tensorboard=False",
    "config.checkpoint.every_steps=0", "config.train.eval_batches=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Process 1's clock jumps 1000 s at every reading: by its own clock a 30-minute checkpoint falls due at step 2.
SKEWED_DRIVER = DRIVER.replace("import jax\n", """import itertools, jax
from llada_jax.checkpoints import run_checkpointer
if jax.process_index() == 1:
    ticks = itertools.count(0.0, 1000.0)
    run_checkpointer.RunCheckpointer.clock = staticmethod(lambda: next(ticks))
""", 1)


def launch(tmp_path, workdir, stop_after, n_processes, devices_each, overrides=(), driver_text=DRIVER, timeout=600):
    driver = tmp_path / "driver.py"
    driver.write_text(driver_text)
    port = free_port()
    procs = []
    for pid in range(n_processes):
        extra = [] if n_processes == 1 else [
            f"config.distributed.coordinator_address=127.0.0.1:{port}",
            f"config.distributed.num_processes={n_processes}", f"config.distributed.process_id={pid}"]
        env = dict(os.environ, XLA_FLAGS=xla_flags(devices_each),
                   JAX_PLATFORMS="cpu")
        procs.append(subprocess.Popen(
            [sys.executable, str(driver), TINY, str(workdir), str(stop_after), *OVERRIDES, *overrides, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # show where each process is stuck, then end them
            for q in procs:
                q.send_signal(signal.SIGUSR1)
            time.sleep(3)
            for q in procs:
                q.kill()
            tails = [q.communicate()[1][-1500:] for q in procs]
            raise AssertionError(f"the processes did not finish within {timeout} s (hung): {tails}")
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))))
    return sorted(results, key=lambda r: r["process"])


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The reference: one process with all 8 devices (shared by the tests that compare against it)."""
    tmp_path = tmp_path_factory.mktemp("single")
    (single,) = launch(tmp_path, tmp_path / "single", 0, n_processes=1, devices_each=8)
    return tmp_path / "single", single


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_devices(tmp_path, single_process_run):
    single_dir, single = single_process_run
    assert single["devices"] == 8 and single["processes"] == 1

    first = launch(tmp_path, tmp_path / "multi", 2, n_processes=2, devices_each=4)
    assert all(r["summary"] == {"step": 2, "stopped_early": "stopped after 2 steps as asked"} for r in first)
    multi = launch(tmp_path, tmp_path / "multi", 0, n_processes=2, devices_each=4)  # resumes from step 2
    assert [r["processes"] for r in multi] == [2, 2] and [r["devices"] for r in multi] == [8, 8]

    # both processes report the same loss, equal to the single-process run's
    for key in ("train_loss", "eval_loss"):
        assert multi[0]["summary"][key] == multi[1]["summary"][key]
        np.testing.assert_allclose(multi[0]["summary"][key], single["summary"][key], rtol=1e-5)
    # each process read its own half of the global batch: disjoint rows whose union is the whole batch
    assert len(multi[0]["rows"]) == len(multi[1]["rows"]) == 4
    assert multi[0]["rows"] + multi[1]["rows"] == single["rows"]
    assert not any(row in multi[1]["rows"] for row in multi[0]["rows"])

    a, _ = params_export.load_params(single_dir / "params")
    b, _ = params_export.load_params(tmp_path / "multi" / "params")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_as_two_slices_over_dcn(tmp_path, single_process_run):
    """mesh.dcn_data=2: the data axis spans the two processes (standing in for slices), fsdp=4 stays inside
    each; the hybrid mesh must train the same model as one process."""
    _, single = single_process_run
    multi = launch(tmp_path, tmp_path / "dcn", 0, n_processes=2, devices_each=4,
                   overrides=["config.mesh.dcn_data=2", "config.mesh.fsdp=4"])
    for r in multi:
        np.testing.assert_allclose(r["summary"]["eval_loss"], single["summary"]["eval_loss"], rtol=1e-5)
        np.testing.assert_allclose(r["summary"]["train_loss"], single["summary"]["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_time_based_saves_follow_process_0_despite_clock_skew(tmp_path):
    """Each host deciding by its own clock put process 1 into the save barrier while process 0 went on to the
    next step's collectives, hanging the run; the decision is process 0's, shared by both."""
    workdir = tmp_path / "skew"
    results = launch(tmp_path, workdir, 0, n_processes=2, devices_each=4, driver_text=SKEWED_DRIVER, timeout=900,
                     overrides=["config.checkpoint.every_minutes=30"])
    assert [r["summary"]["step"] for r in results] == [4, 4]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4]


@pytest.mark.slow
def test_a_lost_peer_stops_the_others_in_one_line_and_the_same_command_resumes(tmp_path):
    """Process 1 is SIGKILLed mid-run: process 0 stops within a bounded time with one line naming process 1
    (no C++ stack trace, no Python traceback), and the same two commands then resume (SIGTERM still stops
    the supervised workers cleanly) and finish the run."""
    workdir, port = tmp_path / "run", free_port()
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")

    def start(pid):
        args = [sys.executable, "-m", "llada_jax.cli", "train", f"--config={TINY}", f"--workdir={workdir}",
                *[f"--{o}" for o in OVERRIDES], "--config.train.steps=16", "--config.checkpoint.every_steps=2",
                "--config.distributed.heartbeat_timeout_s=5", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    procs = [start(0), start(1)]
    deadline = time.time() + 400
    while not (workdir / "checkpoints" / "2").is_dir() and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.1)
    procs[1].kill()  # mid-training: its worker goes with it
    procs[1].wait()
    killed = time.time()
    try:
        out, err = procs[0].communicate(timeout=150)
    finally:
        procs[0].kill()
    assert time.time() - killed < 150 and procs[0].returncode != 0, err[-3000:]
    assert "the job lost process 1 of 2, so process 0 stopped too; run the same command again" in err, err[-3000:]
    assert "Check failure stack trace" not in err and "Traceback" not in err, err[-3000:]

    def finish(procs):
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
        return outs

    # SIGTERM still reaches the supervised workers: they save at the next step and exit 0
    procs = [start(0), start(1)]
    while not (workdir / "checkpoints" / "4").is_dir() and time.time() < deadline + 400 and procs[0].poll() is None:
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = finish(procs)
    assert "resuming from the checkpoint at step" in outs[0]
    assert "received " in outs[0] and "; run the same command to resume" in outs[0]
    assert "resuming from the checkpoint at step" in finish([start(0), start(1)])[0]
    assert params_export.load_params(workdir / "params")[1].train.steps == 16


def test_the_lost_process_is_read_from_the_runtimes_messages():
    from llada_jax.training.supervisor import lost_processes

    service = ("E1125 13:14:43.959001   17404 coordination_service.cc:1549] [1215] Use error polling to propagate the "
               "following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending "
               "heartbeats):\n1\nThe tasks have crashed.\n")
    assert lost_processes(service) == "process 1"
    assert lost_processes("Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 3 heartbeat timeout.") == "process 3"
    leader = ("absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
              "preempted/died/restarted unexpectedly or this task is experiencing network issues.")
    assert lost_processes(leader) == "process 0 (the coordinator)"
    assert lost_processes("Traceback (most recent call last):\nValueError: bad\n") == ""
