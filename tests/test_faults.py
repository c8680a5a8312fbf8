"""Fault injection: no user data lost and one clear sentence for every damaged input, signal and full disk.

One tiny run with a checkpoint at every step is trained once per session and copied for each damage; the
damage is real (bytes overwritten, files truncated or deleted, signals sent to the process, ENOSPC raised
where Orbax writes through epath).
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from llada_jax import cli, sharding
from llada_jax.checkpoints import failures, params_export as exports, run_checkpointer, verify
from llada_jax.training import loop
from llada_jax.utils import output_dirs
from llada_jax.config import ConfigError, load_config
from llada_jax.data import prepare, records
from llada_jax.data.vocab import ByteVocabulary
from llada_jax.training.trainer import Trainer
from llada_jax.training.workdir_lock import LOCK_FILE, WorkdirLock

from helpers import ROOT, SMALL_MODEL, TINY, params_export, small_config, xla_flags

QUIET = ("checkpoint.tensorboard=False", "train.eval_batches=1")
EVERY_STEP = (*QUIET, "checkpoint.every_steps=1", "checkpoint.keep_last=0")
# what Orbax and TensorStore print on their own when a write or read fails; llada_jax says it in one sentence
STORAGE_NOISE = ("Traceback", "ERROR:absl", "Event loop is closed", "Exception ignored", "RESOURCE_EXHAUSTED")


def records_of(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A finished 4-step run with checkpoints 1..4 (never modified: tests copy it)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    loop.run(small_config(*EVERY_STEP), workdir, quiet=True)
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def largest_file(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def scramble_middle(path, seed=0):
    """Same size, random bytes in the middle: what a bad disk or a bad copy does."""
    data = bytearray(path.read_bytes())
    lo, hi = len(data) // 4, 3 * len(data) // 4
    data[lo:hi] = np.random.default_rng(seed).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- checkpoints: verify, fall back, never save bad


def test_scrambled_latest_checkpoint_falls_back_to_the_newest_good_step(run_copy, capsys):
    scramble_middle(largest_file(run_copy / "checkpoints" / "4" / "params"))
    summary = loop.run(small_config(*EVERY_STEP, "train.steps=5"), run_copy)
    out = capsys.readouterr().out
    assert "checkpoint step 4 is unusable" in out and "resuming from step 3" in out
    assert summary["step"] == 5 and np.isfinite(summary["train_loss"])
    assert (run_copy / "checkpoints" / "unusable-step-4").is_dir()  # kept for inspection, not deleted
    steps = sorted(int(p.name) for p in (run_copy / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3, 4, 5]
    params, _ = exports.load_params(run_copy / "params")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    logged = [r["step"] for r in records_of(run_copy) if not r.get("final")]
    assert logged == [1, 2, 3, 4, 5]  # step 4 of the first run was dropped and logged again


def _truncate(step_dir):
    path = largest_file(step_dir / "params")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _delete_data(step_dir):
    largest_file(step_dir / "params").unlink()


def _garbage_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text("{not json")


def _missing_item(step_dir):
    shutil.rmtree(step_dir / "opt_state")


def _garbage_config(step_dir):
    (step_dir / "config" / "metadata").write_text("\x00garbage")


@pytest.mark.parametrize("damage", [_truncate, _delete_data, _garbage_meta, _missing_item, _garbage_config])
def test_every_kind_of_damaged_latest_step_gives_one_sentence_and_a_fallback(run_copy, damage):
    damage(run_copy / "checkpoints" / "4")
    config = small_config(*EVERY_STEP)
    mesh = sharding.make_mesh(config.mesh)
    ckpt = run_checkpointer.RunCheckpointer(run_copy, config, mesh=mesh)
    said = []
    try:
        state, meta = ckpt.restore_newest_good(Trainer(config, mesh).sharded_abstract_state(), said.append)
    finally:
        ckpt.close()
    assert int(state.step) == 3 and meta["step"] == 3
    assert len(said) == 1 and said[0].startswith("checkpoint step 4 is unusable (") and "\n" not in said[0]


@pytest.fixture(scope="session")
def tiny_random_run(tmp_path_factory):
    """configs/tiny.py's state filled with random values, saved as steps 1 and 2: large enough that TensorStore
    reads a step's arrays concurrently, and random so they do not compress away (never modified: tests copy it)."""
    config = load_config(TINY, ["checkpoint.tensorboard=False"])
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rng = np.random.default_rng(0)
    state = Trainer(config, mesh).init_state()
    state = jax.tree.map(lambda x: jax.device_put(rng.standard_normal(x.shape).astype(x.dtype), x.sharding)
                         if x.dtype == np.float32 else x, state)
    workdir = tmp_path_factory.mktemp("tiny_random") / "run"
    ckpt = run_checkpointer.RunCheckpointer(workdir, config, mesh=mesh)
    for step in (1, 2):
        ckpt.save(step, state, {"step": step})
    ckpt.close()
    return workdir, config, mesh


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_step_is_skipped_without_the_storage_librarys_traces(tiny_random_run, tmp_path, capfd):
    """The probe's truncated file: the right recovery, but TensorStore callbacks into closed event loops and
    abandoned reads were printed as tracebacks (with full TensorStore specs) around it."""
    import gc

    source, config, mesh = tiny_random_run
    shutil.copytree(source, tmp_path / "run")
    data = largest_file(tmp_path / "run" / "checkpoints" / "2" / "opt_state")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    ckpt = run_checkpointer.RunCheckpointer(tmp_path / "run", config, mesh=mesh)
    said = []
    try:
        state, _ = ckpt.restore_newest_good(Trainer(config, mesh).sharded_abstract_state(), said.append)
    finally:
        ckpt.close()
    gc.collect()  # abandoned reads are reported as their coroutines are collected
    assert int(state.step) == 1 and len(said) == 1
    assert said[0].startswith("checkpoint step 2 is unusable (it cannot be read: OUT_OF_RANGE: Error reading")
    err = capfd.readouterr().err
    assert not any(noise in err for noise in STORAGE_NOISE), err[-3000:]


ORPHANED_FUTURES = """
import asyncio, gc, logging, sys
from llada_jax.utils import library_noise
logging.basicConfig()
library_noise.log_to(sys.argv[1])

async def orphan(text):
    # as TensorStore does from C++: an exception set on a future, no Python frame raised it
    asyncio.get_running_loop().create_future().set_exception(ValueError(text))

async def main():
    await orphan('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database: No space left on device')
    await orphan("a user's own future failed")
    try:
        raise ValueError("UNAVAILABLE: raised by Python code, so it has a traceback")
    except ValueError as e:
        asyncio.get_running_loop().create_future().set_exception(e)

asyncio.run(main())
gc.collect()
"""


def test_asyncio_reports_of_storage_futures_nobody_collected_go_to_the_log_file(tmp_path):
    """CI's full disk: Orbax abandoned the futures of the fragments it no longer waited for, and asyncio
    printed each ("Future exception was never retrieved") after the sentence. Only TensorStore's go to the log."""
    sink = tmp_path / "storage-errors.log"
    proc = subprocess.run([sys.executable, "-c", ORPHANED_FUTURES, str(sink)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESOURCE_EXHAUSTED" not in proc.stderr and "No space left on device" in sink.read_text()
    assert proc.stderr.count("Future exception was never retrieved") == 2, proc.stderr  # the two not TensorStore's
    assert "a user's own future failed" in proc.stderr and "raised by Python code" in proc.stderr


def test_no_restorable_step_is_one_sentence_listing_why_and_every_step_is_set_aside(run_copy, capsys):
    for step in (1, 2, 3, 4):
        _missing_item(run_copy / "checkpoints" / str(step))
    argv = ["train", f"--config={TINY}", f"--workdir={run_copy}", "--quiet",
            *[f"--config.{o}" for o in SMALL_MODEL + list(EVERY_STEP)]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "steps 4, 3, 2 and 1: it cannot be read" in err
    # renamed as a single unusable step is (before: left as 1..4 while one bad step among good ones is renamed)
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "unusable-step-1", "unusable-step-2", "unusable-step-3", "unusable-step-4"]
    assert cli.main(argv) == 2  # and the same command never silently starts again from step 0
    err = capsys.readouterr().err
    assert "was set aside as unusable" in err and "rename unusable-step-N back to N" in err
    assert len(err.strip().splitlines()) == 1 and not (run_copy / "checkpoints" / "1").exists()


def test_a_state_with_non_finite_values_is_never_saved(tmp_path):
    config = small_config(*QUIET)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    good = Trainer(config, mesh).init_state()
    bad = dict(jax.device_get(good.params), ln_f=np.full((32,), np.nan, np.float32))
    exports.save_params(tmp_path / "nan", bad, config)
    run = small_config(*EVERY_STEP, "train.steps=3", "train.max_nonfinite_in_a_row=5",
                       f"train.init_from={tmp_path / 'nan'}")
    loop.run(run, tmp_path / "run", quiet=True)
    saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == []  # before: steps 1..3 saved with NaN params, and rotation deleted the good ones


def test_an_update_that_would_make_params_non_finite_is_skipped():
    config = small_config(*QUIET)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    # an infinite first moment: loss and gradient are finite, the update and the new params are not
    opt = jax.tree_util.tree_map_with_path(
        lambda path, x: x + np.inf if "mu" in jax.tree_util.keystr(path) else x, state.opt_state)
    state = state.replace(opt_state=opt)
    before = np.asarray(state.params["wte"]).copy()
    new, metrics = trainer.step(state, sharding.global_batch({"tokens": np.full((8, 16), 5, np.int32)}, mesh))
    assert int(metrics["skipped"]) == 1 and np.isfinite(float(metrics["grad_norm"]))
    np.testing.assert_array_equal(np.asarray(new.params["wte"]), before)


def _flip_sign_in_place(step_dir, array="blocks.q_proj"):
    """Rewrites one params array of a saved step with its sign flipped, through TensorStore (as a tool or a bad
    copy would): the checkpoint stays readable, only the values changed."""
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{step_dir}/params/",
                                          "path": f"{array}/"}}
    store = ts.open(spec).result()
    store.write(-store.read().result()).result()


def test_a_sign_flipped_parameter_is_caught_on_restore_and_the_run_falls_back(run_copy, capsys):
    """The probe's silent-wrong trial: sum |x| cannot see a sign flip, so the old checksums let step 4 restore."""
    _flip_sign_in_place(run_copy / "checkpoints" / "4")
    summary = loop.run(small_config(*EVERY_STEP, "train.steps=5"), run_copy)
    out = capsys.readouterr().out
    assert ("checkpoint step 4 is unusable (its data does not match the digests written with it "
            "(params/blocks/q_proj changed)); resuming from step 3") in out
    assert summary["step"] == 5 and (run_copy / "checkpoints" / "unusable-step-4").is_dir()


def _digest_of(tree):
    return verify.state_digests(tree, {})[0]["params/w"]


def test_the_digest_sees_every_changed_value_and_not_the_mesh():
    """A sign flip, two swapped values and a change that keeps the sum all change the digest (sum |x| misses the
    first two and the old tolerance the third); a resharded copy keeps it bit for bit."""
    from jax.sharding import NamedSharding, PartitionSpec

    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    want = _digest_of({"w": w})
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    for spec in (PartitionSpec("a", "b"), PartitionSpec("b", None), PartitionSpec()):
        assert _digest_of({"w": jax.device_put(w, NamedSharding(mesh, spec))}) == want
    flipped, swapped, shifted = w.copy(), w.copy(), w.copy()
    flipped[7, 3] = -flipped[7, 3]
    swapped[0, 0], swapped[9, 40] = w[9, 40], w[0, 0]
    shifted[1, 1] += 0.25
    shifted[2, 2] -= 0.25
    for changed in (flipped, swapped, shifted, -w):
        assert _digest_of({"w": changed}) != want
    assert verify.checksums({"w": -w}, {}) == verify.checksums({"w": w}, {})  # what the old checksums saw
    for dtype in (jnp.bfloat16, np.int32):  # every dtype is hashed by its bits
        assert _digest_of({"w": w.astype(dtype)}) != _digest_of({"w": (w + 1).astype(dtype)})
    assert verify.state_digests({"w": np.full((3,), np.inf, np.float32)}, {})[1] is False


# ---------------------------------------------------------------- full disk during a background save


def test_a_failed_background_save_stops_at_the_next_step_in_one_sentence(tmp_path, monkeypatch):
    path_class = type(epath.Path(str(tmp_path)))
    original = path_class.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "_METADATA" and "/2.orbax-checkpoint-tmp/params" in str(self):  # written in the background
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(path_class, "write_text", full_disk)
    config = small_config(*EVERY_STEP, "train.steps=12")
    with pytest.raises(failures.CheckpointWriteError) as caught:
        loop.run(config, tmp_path / "run", quiet=True)
    message = str(caught.value)
    assert message.startswith("checkpoint step 2 could not be written") and "No space left on device" in message
    assert "step 1 is the last good one" in message and "\n" not in message
    assert max(r["step"] for r in records_of(tmp_path / "run")) <= 4  # noticed within a step or two, not at the end


NO_SPACE = ("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database at local file \"{path}\": Failed to "
            "write 3133440 bytes to file 27: No space left on device [os_error_code='28']")


def test_a_full_disk_under_tensorstore_stops_the_run_at_the_next_step_in_one_sentence(tmp_path, monkeypatch, capfd):
    """TensorStore reports a full disk as a ValueError on Orbax's background thread, where Orbax's own error check
    consumes it: before, the run went on to the next save and died there in a traceback."""
    from orbax.checkpoint._src.serialization import serialization

    original = serialization.async_serialize_from_host

    async def full_disk(slices, spec, **kwargs):
        if "/2.orbax-checkpoint-tmp/" in json.dumps(spec):  # the arrays of step 2, written in the background
            raise ValueError(NO_SPACE.format(path=json.dumps(spec)[:80]))
        return await original(slices, spec, **kwargs)

    monkeypatch.setattr(serialization, "async_serialize_from_host", full_disk)
    with pytest.raises(failures.CheckpointWriteError) as caught:
        loop.run(small_config(*EVERY_STEP, "train.steps=12"), tmp_path / "run", quiet=True)
    assert str(caught.value) == (
        f"checkpoint step 2 could not be written to {tmp_path / 'run' / 'checkpoints'}: No space left on device; "
        "step 1 is the last good one. Free space or fix the storage, then run the same command to resume")
    assert max(r["step"] for r in records_of(tmp_path / "run")) <= 4
    err = capfd.readouterr().err
    assert not any(noise in err for noise in STORAGE_NOISE), err[-3000:]
    assert "No space left on device" in (tmp_path / "run" / loop.STORAGE_LOG).read_text()  # the details, kept


@pytest.fixture
def mounted(tmp_path):
    """mount(options, folder): a tmpfs or a read-only bind mount at `folder`, unmounted after the test; skipped
    where this process may not mount (the tests beside it cover the same faults without mounts)."""
    done = []

    def mount(args, target):
        target.mkdir(parents=True, exist_ok=True)
        for command in args:
            proc = subprocess.run(["mount", *command, str(target)], capture_output=True, text=True) \
                if shutil.which("mount") else None
            if proc is None or proc.returncode:
                pytest.skip(f"cannot mount here ({proc.stderr.strip() if proc else 'no mount command'}); the "
                            "monkeypatched tests beside this one cover the same fault")
            done.append(target)
        return target

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def run_cli(*args, **kwargs):
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, **kwargs)


@pytest.mark.slow
def test_a_full_disk_is_one_sentence_naming_the_last_good_step(tmp_path, mounted):
    """The probe's trial on a real full file system (a 1.5 MB tmpfs holds two of this run's checkpoints)."""
    disk = mounted([["-t", "tmpfs", "-o", "size=1500k", "tmpfs"]], tmp_path / "disk")
    proc = run_cli("train", f"--config={TINY}", f"--workdir={disk / 'run'}",
                   *[f"--config.{o}" for o in SMALL_MODEL + list(EVERY_STEP)], "--config.train.steps=40")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert last.startswith("llada-jax train: error: checkpoint step ") and "No space left on device; step " in last
    bad, good = int(last.split("checkpoint step ")[1].split()[0]), int(last.split("; step ")[1].split()[0])
    assert good == bad - 1 and max(r["step"] for r in records_of(disk / "run")) <= bad + 2
    assert sorted(int(p.name) for p in (disk / "run" / "checkpoints").iterdir() if p.name.isdigit())[-1] == good
    assert not any(noise in proc.stdout + proc.stderr for noise in STORAGE_NOISE)


def test_a_read_only_workdir_is_one_sentence(tmp_path, mounted, trained, capsys):
    """Fresh, existing empty and existing run folders on a read-only mount, and a new folder under it."""
    source = tmp_path / "source"
    (source / "empty").mkdir(parents=True)
    shutil.copytree(trained, source / "run")
    ro = mounted([["--bind", str(source)], ["-o", "remount,ro,bind"]], tmp_path / "ro")
    for workdir in (ro / "empty", ro / "run", ro / "new", ro / "new" / "deeper"):
        assert cli.main(["train", f"--config={TINY}", f"--workdir={workdir}",
                         *[f"--config.{o}" for o in SMALL_MODEL + list(EVERY_STEP)]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--workdir={workdir} cannot be written (Read-only file system)" in err


@pytest.mark.parametrize("where", ["mkdir", "lock"])
def test_an_unwritable_workdir_is_one_sentence_without_mounts(tmp_path, monkeypatch, capsys, where):
    """The same fault where mounting is not allowed: the operating system's refusal at the lowest write layer."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))

    if where == "mkdir":
        monkeypatch.setattr(type(epath.Path(str(tmp_path))), "mkdir", refuse)
    else:
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse(path) if str(path).endswith(LOCK_FILE)
                            else real_open(path, *a, **k))
    assert cli.main(["train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                     *[f"--config.{o}" for o in SMALL_MODEL + list(EVERY_STEP)]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written (Read-only file system)" in err


def test_any_write_the_machine_refuses_in_any_command_is_one_line(monkeypatch, capsys):
    """The CLI's last word on an OSError from the machine (a full disk, a read-only mount) in a command that does
    not catch it itself; any other OSError is a bug and stays a traceback."""
    from llada_jax.cli import sample

    def full(args, overrides):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/trace.png")

    monkeypatch.setattr(sample, "run", full)
    assert cli.main(["sample", "--checkpoint=x", "--prompt=a"]) == 2
    err = capsys.readouterr().err
    assert err == ("llada-jax sample: error: cannot use /data/out/trace.png: No space left on device; free space "
                   "there, then run the command again\n")
    monkeypatch.setattr(sample, "run", lambda args, overrides: os.close(-1))  # EBADF: a bug, not the machine
    with pytest.raises(OSError):
        cli.main(["sample", "--checkpoint=x", "--prompt=a"])


# ---------------------------------------------------------------- metrics on resume


def test_resume_drops_metrics_past_the_restored_step_and_the_final_record(run_copy):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    # as if the first run died after logging step 4 (and its final record) but before checkpoint 4 existed
    shutil.rmtree(run_copy / "checkpoints" / "4")
    assert any(json.loads(line).get("final") for line in lines)
    summary = loop.run(small_config(*EVERY_STEP), run_copy, quiet=True)
    kept = records_of(run_copy)
    assert [r["step"] for r in kept if not r.get("final")] == [1, 2, 3, 4]
    assert sum(1 for r in kept if r.get("final")) == 1 and np.isfinite(summary["train_loss"])


def test_resuming_a_finished_run_reports_its_last_train_loss(run_copy):
    last = [r for r in records_of(run_copy) if not r.get("final")][-1]
    summary = loop.run(small_config(*EVERY_STEP), run_copy, quiet=True)
    assert summary["train_loss"] == last["loss"]  # before: NaN, no step ran in this invocation
    assert sum(1 for r in records_of(run_copy) if r.get("final")) == 1


def test_tensorboard_shows_each_step_once_with_the_resumed_value_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = ("train.eval_batches=1", "checkpoint.every_steps=1", "checkpoint.keep_last=0", "train.steps=3")
    loop.run(small_config(*logged), tmp_path, quiet=True)
    for step in (2, 3):  # as if killed after logging step 3 while only checkpoint 1 was complete
        shutil.rmtree(tmp_path / "checkpoints" / str(step))
    loop.run(small_config(*logged, "optimizer.lr=0.01"), tmp_path, quiet=True)  # a new lr: new values from step 2
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [step for step, _ in loss] == [1, 2, 3]  # before: 1, 2, 3, 2, 3
    resumed = {r["step"]: r["loss"] for r in records_of(tmp_path) if "loss" in r and not r.get("final")}
    np.testing.assert_allclose([value for _, value in loss], [resumed[1], resumed[2], resumed[3]], rtol=1e-6)


# ---------------------------------------------------------------- config mistakes


@pytest.mark.parametrize("override, named", [
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ("train.eval_batches=-1", "train.eval_batches=-1 must be >= 0"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last=-1 must be >= 0"),
    ("train.steps=(3", "--config.train.steps='(3' is not a valid int"),
])
def test_bad_values_and_override_syntax_are_one_sentence(tmp_path, capsys, override, named):
    code = cli.main(["train", f"--config={TINY}", f"--workdir={tmp_path}", f"--config.{override}"])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_naming_a_file_is_one_sentence(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = cli.main(["train", f"--config={TINY}", f"--workdir={tmp_path / 'notes.txt'}"])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": "now"}))
        with pytest.raises(ConfigError, match=f"in use by another llada-jax run \\(pid {holder.pid}"):
            loop.run(small_config(*QUIET), tmp_path, quiet=True)
    finally:
        holder.kill()
        holder.wait()
    notes = []
    with WorkdirLock(tmp_path, log=notes.append):  # the holder is gone: its lock is stale
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock" in notes[0] and not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------- signals in every phase


def _send_during(monkeypatch, module, name, sig):
    original = getattr(module, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)


def test_sigint_during_start_up_ends_cleanly_with_nothing_saved(tmp_path, monkeypatch, capsys):
    _send_during(monkeypatch, loop, "build_data", signal.SIGINT)
    result = loop.run(small_config(*QUIET), tmp_path)
    assert result == {"step": 0, "stopped_early": "received SIGINT during start-up"}
    assert "during start-up" in capsys.readouterr().out
    assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / LOCK_FILE).exists()


def test_sigint_during_the_final_export_finishes_it(tmp_path, monkeypatch, capsys):
    _send_during(monkeypatch, exports, "save_params", signal.SIGINT)
    summary = loop.run(small_config(*QUIET, "train.steps=1"), tmp_path)
    assert summary["step"] == 1 and "during the final evaluation/export" in capsys.readouterr().out
    assert exports.load_params(tmp_path / "params")[1].train.steps == 1


def test_sigterm_right_after_start_up_exits_zero(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "llada_jax.cli", "train", f"--config={TINY}", f"--workdir={tmp_path}",
            *[f"--config.{o}" for o in SMALL_MODEL + list(QUIET)], "--config.train.steps=100000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    first = proc.stdout.readline()  # the "model: ..." line, printed before the state is built
    assert first.startswith("model:"), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in out and "Traceback" not in err


# ---------------------------------------------------------------- safe output folders


@pytest.fixture(scope="session")
def export(tmp_path_factory):
    return params_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def hf_folder(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "hf"
    assert cli.main(["convert", "to-hf", f"--checkpoint={export}", f"--out={out}", "--dtype=float32"]) == 0
    return out


def test_from_hf_never_deletes_a_users_folder(hf_folder, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert cli.main(["convert", "from-hf", f"--hf-dir={hf_folder}", f"--out={out}"]) == 2
    assert "is not empty (it holds thesis.tex)" in capsys.readouterr().err
    assert cli.main(["convert", "from-hf", f"--hf-dir={hf_folder}", f"--out={out}", "--overwrite"]) == 0
    assert (out / "thesis.tex").read_text() == "years of work"
    assert exports.load_params(out)[0]["wte"].shape == (320, 32)
    (tmp_path / "file").write_text("mine")
    assert cli.main(["convert", "from-hf", f"--hf-dir={hf_folder}", f"--out={tmp_path / 'file'}", "--overwrite"]) == 2
    assert (tmp_path / "file").read_text() == "mine"


def test_to_hf_refuses_a_non_empty_folder_and_a_file(export, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "llada_jax_config.json").write_text("my notes")
    assert cli.main(["convert", "to-hf", f"--checkpoint={export}", f"--out={out}"]) == 2
    assert (out / "llada_jax_config.json").read_text() == "my notes"
    (tmp_path / "f").write_text("x")
    assert cli.main(["convert", "to-hf", f"--checkpoint={export}", f"--out={tmp_path / 'f'}"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (out / "README.md").write_text("keep me")
    assert cli.main(["convert", "to-hf", f"--checkpoint={export}", f"--out={out}", "--overwrite"]) == 0
    assert (out / "README.md").read_text() == "keep me" and (out / "model.safetensors").exists()


def test_from_hf_on_a_truncated_safetensors_or_a_bad_config_json(hf_folder, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(hf_folder, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert cli.main(["convert", "from-hf", f"--hf-dir={broken}", f"--out={tmp_path / 'a'}"]) == 2
    assert "is truncated" in capsys.readouterr().err
    (broken / "config.json").write_text("<html>not json</html>")
    assert cli.main(["convert", "from-hf", f"--hf-dir={broken}", f"--out={tmp_path / 'b'}"]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err


def test_sample_refuses_to_overwrite_a_trace_and_names_a_truncated_checkpoint(export, tmp_path, capsys):
    (tmp_path / "trace.png").write_bytes(b"my picture")
    assert cli.main(["sample", f"--checkpoint={export}", "--prompt=a", f"--trace={tmp_path / 'trace.png'}"]) == 2
    assert (tmp_path / "trace.png").read_bytes() == b"my picture" and "already exists" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    _truncate(broken)
    assert cli.main(["sample", f"--checkpoint={broken}", "--prompt=a", "--gen-length=8", "--steps=8",
                     "--block-length=8"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and len(err.strip().splitlines()) == 1


def test_eval_refuses_to_overwrite_its_output_before_evaluating(tmp_path, capsys):
    (tmp_path / "results.json").write_text("last week's results")
    assert cli.main(["eval", f"--checkpoint={tmp_path}", "--tasks=x", f"--output={tmp_path / 'results.json'}"]) == 2
    assert "--output=" in capsys.readouterr().err and (tmp_path / "results.json").read_text() == "last week's results"


def test_params_export_with_overwrite_keeps_other_files(tmp_path):
    config = small_config(*QUIET)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        exports.save_params(tmp_path / "export", {"w": np.ones((4,), np.float32)}, config)
    exports.save_params(tmp_path / "export", {"w": np.ones((4,), np.float32)}, config, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "notes.txt", "params"]
    with pytest.raises(ConfigError, match="--trace=.* already exists"):
        output_dirs.check_file(tmp_path / "export" / "notes.txt", flag="--trace", overwrite=False)


# ---------------------------------------------------------------- prepare: fingerprints, shards, source


V = ByteVocabulary()


def _texts(folder, n=12):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (folder / f"d{i:02d}.txt").write_text(f"document number {i} " * 5)
    return str(folder / "*.txt")


def _prepare(out, pattern, **kw):
    return prepare.prepare(str(out), source="text", vocab=V, source_kw={"path": pattern}, docs_per_shard=4,
                           eval_fraction=0.1, log=lambda s: None, **kw)


def test_prepare_notices_input_rewritten_after_it_finished(tmp_path):
    pattern = _texts(tmp_path / "in")
    _prepare(tmp_path / "out", pattern)
    (tmp_path / "in" / "d03.txt").write_text("a different text of the very same kind")
    with pytest.raises(ConfigError, match="d03.txt changed since"):
        _prepare(tmp_path / "out", pattern)
    (tmp_path / "out" / "README").write_text("mine")
    manifest = _prepare(tmp_path / "out", pattern, overwrite=True)
    assert manifest["complete"] and (tmp_path / "out" / "README").read_text() == "mine"
    _, src, _ = records.open_split(str(tmp_path / "out"), "train", V)
    texts = [V.decode(records.decode_record(src[i])) for i in range(len(src))]
    assert "a different text of the very same kind" in texts


def test_prepare_refuses_input_changed_while_it_ran(tmp_path, monkeypatch):
    pattern = _texts(tmp_path / "in")
    original = prepare.sources.documents

    def changing(*args, **kwargs):
        for i, doc in enumerate(original(*args, **kwargs)):
            if i == 5:
                (tmp_path / "in" / "d00.txt").write_text("rewritten mid-prepare")
            yield doc

    monkeypatch.setattr(prepare.sources, "documents", changing)
    with pytest.raises(ConfigError, match="changed while"):
        _prepare(tmp_path / "out", pattern)
    assert not records.read_manifest(str(tmp_path / "out"))["complete"]


def _register_seqio_task(name, texts):
    import seqio
    import tensorflow as tf

    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"targets": texts}),
            splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=False)})


def test_prepare_notices_a_changed_seqio_task_definition(tmp_path):
    name, out = "llada_fault_task", tmp_path / "out"
    seqio_kw = {"task": name, "split": "train", "feature": "targets", "import_module": ""}
    run = lambda **kw: prepare.prepare(str(out), source="seqio", vocab=V, source_kw=seqio_kw, docs_per_shard=4,
                                       log=lambda s: None, **kw)
    try:
        _register_seqio_task(name, ["first text", "second text"])
        first = run()["inputs"]
        _register_seqio_task(name, ["first text", "second text"])  # registered again, same definition
        assert run()["inputs"] == first
        _register_seqio_task(name, ["first text", "an edited second text"])
        with pytest.raises(ConfigError, match=f"seqio task '{name}' \\(its definition\\) changed since"):
            run()  # before: "already complete", the old text kept
        run(overwrite=True)
    finally:
        import seqio
        seqio.TaskRegistry.remove(name)
    _, src, _ = records.open_split(str(out), "train", V)
    assert [V.decode(records.decode_record(src[i])) for i in range(len(src))] == ["first text", "an edited second text"]


def test_a_same_size_corrupt_shard_is_named_before_training_reads_it(tmp_path):
    _prepare(tmp_path / "out", _texts(tmp_path / "in"))
    shard = tmp_path / "out" / records.shard_name("train", 0)
    scramble_middle(shard)
    with pytest.raises(ConfigError, match="train-00000.array_record does not match the checksum"):
        records.open_split(str(tmp_path / "out"), "train", V)
    with pytest.raises(ConfigError, match="does not match the checksum"):
        _prepare(tmp_path / "out", _texts(tmp_path / "in"))


def test_a_shard_rotten_in_place_is_skipped_record_by_record_with_one_line(tmp_path, capfd):
    from llada_jax.data import pipeline

    _prepare(tmp_path / "out", _texts(tmp_path / "in", n=40))  # train shards of 4 documents
    shard = tmp_path / "out" / records.shard_name("train", 1)
    before, good = os.stat(shard), shard.read_bytes()

    def rot(offset):  # same size, same modification time: only the bytes changed
        shard.write_bytes(good[:offset] + b"\xff" * 8 + good[offset + 8:])
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))

    rot(600)  # the shard's index
    with pytest.raises(ConfigError, match=f"cannot read shard {shard} .*prepare the folder again with --overwrite"):
        records.open_split(str(tmp_path / "out"), "train", V)
    rot(400)  # one record's data
    _, src, info = records.open_split(str(tmp_path / "out"), "train", V)
    texts = [V.decode(records.decode_record(src[i])) for i in range(len(src))]  # before: chunk data hash mismatch
    assert len(texts) == info["documents"] and all(t.startswith("document number ") for t in texts)
    assert src.skipped == 1 and texts[6:8] == ["document number 8 " * 5] * 2  # record 6 replaced by record 7
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"of shard {shard} is corrupt" in err and "--overwrite" in err
    rows = pipeline.rows(src, "pretrain", seq_len=16, eos_id=V.eos_id, pad_id=V.pad_id, seed=0, num_epochs=1)
    assert sum(1 for _ in rows) > 0  # the grain pipeline reads through the same checks


def test_prepare_infers_the_source_from_input_or_refuses(tmp_path, capsys):
    _texts(tmp_path / "in", n=3)
    out = tmp_path / "out"
    assert cli.main(["prepare", f"--input={tmp_path / 'in' / '*.txt'}", f"--output={out}",
                     "--eval-fraction=0"]) == 0
    manifest = records.read_manifest(str(out))
    assert manifest["identity"]["source"]["source"] == "text" and manifest["splits"]["train"]["documents"] == 3
    assert cli.main(["prepare", "--source=pydoc", f"--input={tmp_path / 'in' / 'd00.txt'}",
                     f"--output={tmp_path / 'o2'}"]) == 2
    assert "--source=pydoc does not read --input" in capsys.readouterr().err
    (tmp_path / "data.bin").write_bytes(b"\0")
    assert cli.main(["prepare", f"--input={tmp_path / 'data.bin'}", f"--output={tmp_path / 'o3'}"]) == 2
    (tmp_path / "o4").write_text("a file")
    assert cli.main(["prepare", f"--input={tmp_path / 'in' / '*.txt'}", f"--output={tmp_path / 'o4'}"]) == 2
    assert (tmp_path / "o4").read_text() == "a file"
