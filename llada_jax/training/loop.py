"""The training loop: data in, jitted steps, checkpoints, progress and metrics out.

Everything with side effects (reading the corpus, checkpoints, signals, printing) is here; the math it
drives is in step.py, objectives/ and models/. A run in a workdir that already has checkpoints continues
from the newest one that restores cleanly; SIGTERM/SIGINT save at the next step boundary and return cleanly.

After each step the loop walks a short list of hooks, each with its own cadence (logging every
train.log_every steps, eval every train.eval_every, checkpoints by checkpoint.every_steps / every_minutes),
so no cadence depends on another. Decisions every host must share (save now? stop now?) are agreed across
processes before anyone acts on them.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from llada_jax import sharding
from llada_jax.checkpoints import locate, params_export, run_checkpointer, run_config
from llada_jax.config import validate
from llada_jax.data import pipeline
from llada_jax.objectives import registry as objectives
from llada_jax.training.metrics import MetricsWriter
from llada_jax.training.preemption import PreemptionWatcher
from llada_jax.training.trainer import Trainer
from llada_jax.training.workdir_lock import WorkdirLock, make_workdir
from llada_jax.utils import library_noise
from llada_jax.utils.progress import Progress, fmt_time, heartbeat

STORAGE_LOG = "storage-errors.log"  # Orbax's and TensorStore's own messages when a checkpoint write or read fails


def count_params(abstract_params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def progress_line(record: dict, t_cfg, eta: str) -> str:
    """The console line, in the objective's words (the AR baseline's loss is a next-token NLL)."""
    tok_s = record["tokens_per_s"]
    objective = objectives.get(t_cfg.objective)
    return (f"step {record['step']}/{t_cfg.steps} | {objective.loss_label} {record['loss']:.4f} | "
            f"{objective.accuracy_label} acc {record['masked_accuracy']:.3f} | grad norm "
            f"{record['grad_norm']:.3f} | lr {record['lr']:.2e} | " + router_summary(record)
            + (f"{tok_s:,.0f} tok/s" if math.isfinite(tok_s) else "- tok/s") + f" | ETA {eta}"
            + (f" | skipped {record['skipped_total']}" if record["skipped_total"] else "")
            + (f" | block {record['block_size']}" if record.get("block_size") is not None else "")
            + (f" | mask noise {record['mask_noise_std']:.3f}" if "mask_noise_std" in record else ""))


def router_summary(record: dict) -> str:
    """A mixture of experts' router in the progress line: the worst layer's max/mean expert load, the balancing
    loss, the dropped fraction (with a capacity) and the expert-bias range ('' for a dense model)."""
    if "moe_worst_load" not in record:
        return ""
    text = f"load max/mean {record['moe_worst_load']:.2f} | balance {record['moe_balance_loss']:.3f} | "
    if "moe_dropped_fraction" in record:
        text += f"dropped {record['moe_dropped_fraction']:.3f} | "
    if "moe_bias_min" in record:
        text += f"bias [{record['moe_bias_min']:+.3f}, {record['moe_bias_max']:+.3f}] | "
    return text


def scalar_metrics(metrics: dict, first_layer: int = 0) -> dict[str, float]:
    """The step's metrics as floats; a per-layer array (the router's) becomes one entry per layer, named by its
    layer number, and (for a fraction) its overall mean under the plain name."""
    out = {}
    for name, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[name] = float(value)
            continue
        if name == "moe_dropped_fraction":
            out[name] = float(value.mean())
        out.update({f"{name}/layer{first_layer + i}": float(v) for i, v in enumerate(value.reshape(-1))})
    return out


def build_data(config):
    """(train batch iterator with get_state/set_state, fixed eval batches for this process, info)."""
    return pipeline.build(config, jax.process_index(), jax.process_count())


@dataclasses.dataclass
class Session:
    """One invocation of `run`: the parts it built, the train state, and what hooks read and update."""
    config: Any
    workdir: epath.Path
    mesh: Any
    trainer: Trainer
    ckpt: run_checkpointer.RunCheckpointer
    log: MetricsWriter
    batches: Any
    eval_sets: list
    info: dict
    n_params: int
    state: Any = None
    start_step: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)  # the last step's metrics (device arrays)
    record: dict = dataclasses.field(default_factory=dict)  # the last logged record
    skipped_total: int = 0
    skipped_in_a_row: int = 0
    ckpt_block_s: float = 0.0
    stopping: str = ""
    clock: tuple = (0.0, 0)  # (time, step) of the last throughput reading
    progress: Any = None  # when the console hears from the run (every few seconds, and every logged step)
    block_size: int | None = None  # the block size of the last step (block diffusion)
    started: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class Hook:
    """Something done after a step when `due(done, is_last)` says so."""
    name: str
    due: Callable[[int, bool], bool]
    action: Callable[[Session, int], None]


def every(n: int, *, at_last: bool = False) -> Callable[[int, bool], bool]:
    """Due after every n-th step (never when n is 0), and after the last step when `at_last`."""
    return lambda done, is_last: (n > 0 and done % n == 0) or (at_last and is_last)


def start_session(config, workdir: epath.Path, quiet: bool) -> Session:
    """Builds mesh, trainer, checkpointer, metrics writer and data; prints the header. The caller closes
    `s.ckpt`; if building fails after the checkpointer exists, it is closed here (no Orbax shutdown traces)."""
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    ckpt = run_checkpointer.RunCheckpointer(workdir, config, mesh=mesh)
    try:
        log = MetricsWriter(workdir, tensorboard=config.checkpoint.tensorboard, quiet=quiet)
        batches, eval_sets, info = build_data(config)
    except BaseException:
        ckpt.close()
        raise
    s = Session(config, workdir, mesh, trainer, ckpt, log, batches, eval_sets, info,
                count_params(trainer.abstract_state.params))
    log.print(
        f"model: {s.n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s) | corpus {info['train_tokens']:,} train / {info['eval_tokens']:,} "
        f"eval tokens | unigram entropy {info['unigram_entropy']:.3f} nats/token | attention {trainer.attention_kernel}"
    )
    if trainer.attention_note:
        log.print(trainer.attention_note)
    return s


def restore_or_init(s: Session) -> None:
    """The starting state: the newest checkpoint in the workdir that restores cleanly, else train.init_from's
    params, else fresh. metrics.jsonl loses the records past the restored step (they are logged again)."""
    init_from = s.config.train.init_from
    restored = s.ckpt.restore_newest_good(s.trainer.sharded_abstract_state(), s.log.print)
    if restored is not None:
        s.state, meta = restored
        s.batches.set_state(meta["data"])
        s.log.print(f"resuming from the checkpoint at step {int(s.state.step)} in {s.ckpt.directory}")
        step_dir = s.ckpt.directory / str(int(s.state.step))
        changes = run_config.schedule_changes(locate.read_config(step_dir), s.config)
        if changes:
            s.log.print(f"note: the schedule differs from the checkpoint's ({', '.join(changes)}); training continues "
                        f"from step {int(s.state.step)} under the new one. To start fresh, use a new --workdir or "
                        f"delete {s.ckpt.directory}")
    elif init_from:
        params, _ = params_export.load_params(init_from, s.mesh, s.config)
        s.state = s.trainer.state_from_params(params)
        s.log.print(f"starting from the params in {init_from} (fresh optimizer, step 0)")
    else:
        s.state = s.trainer.init_state()
    s.start_step = int(s.state.step)
    s.record = s.log.resume_at(s.start_step)
    s.clock = (time.perf_counter(), s.start_step)
    s.progress = Progress(s.config.train.steps, start=s.start_step)


def count_skip(s: Session, flag, done: int) -> None:
    """Counts a skipped (non-finite) update; halts after train.max_nonfinite_in_a_row in a row."""
    skipped = int(flag)
    s.skipped_total += skipped
    s.skipped_in_a_row = s.skipped_in_a_row + 1 if skipped else 0
    if s.skipped_in_a_row > s.config.train.max_nonfinite_in_a_row:
        raise FloatingPointError(
            f"{s.skipped_in_a_row} steps in a row had a non-finite loss or gradient (up to step {done}); "
            "lower optimizer.lr, check the data, or resume from an earlier checkpoint"
        )


def compiling_step(s: Session, batch, step: int, announce: str, since: float) -> None:
    """Runs a step whose program compiles first, saying so (big models compile for minutes) and how long it took
    since `since`; tokens/s then counts the steps after it."""
    s.log.print(announce)
    with heartbeat("still compiling the train step", s.log.print):
        s.state, s.metrics = jax.block_until_ready(s.trainer.step(s.state, batch, step))
    s.log.print(f"compiled and ran step {step + 1} in {time.perf_counter() - since:.1f} s")
    s.clock = (time.perf_counter(), step + 1)


def train_one_step(s: Session, step: int) -> int:
    """Runs step `step`; the previous step's skip flag is read now, so the host never waits for the step it
    just queued (the last step's flag is read at once)."""
    s.ckpt.check_saved()  # a failed background save stops the run here, one step later, in one sentence
    previous = s.metrics.get("skipped")
    batch = sharding.global_batch(next(s.batches), s.mesh)
    done = step + 1
    block_size = s.trainer.block_size_at(step)
    if step == s.start_step:
        compiling_step(s, batch, step, "compiling the train step (the first step waits for it) ...", s.started)
    elif block_size != s.block_size and not s.trainer.has_compiled(block_size):
        compiling_step(s, batch, step, f"block size {s.block_size} -> {block_size} from step {done}: compiling its "
                       "step (once) ...", time.perf_counter())
    else:
        if block_size != s.block_size:
            s.log.print(f"block size {s.block_size} -> {block_size} from step {done} (its step is compiled already)")
        s.state, s.metrics = s.trainer.step(s.state, batch, step)
    s.block_size = block_size
    if previous is not None:
        count_skip(s, previous, done)
    if done == s.config.train.steps:
        count_skip(s, s.metrics["skipped"], done)
    return done


def logged(t_cfg) -> Callable[[int, bool], bool]:
    """Steps whose metrics are written: every train.log_every-th and the last."""
    return every(t_cfg.log_every, at_last=True)


def log_progress(s: Session, done: int) -> None:
    """Hook: prints the progress line (every few seconds at least) and writes the record on logged steps."""
    t = s.config.train
    metrics = scalar_metrics(jax.device_get(s.metrics), int(s.config.model.get("moe", {}).get("first_dense_layers", 0)))
    now = time.perf_counter()
    tok_s = math.nan
    if done > s.clock[1]:
        tok_s = (done - s.clock[1]) * t.global_batch_size * t.seq_len / (now - s.clock[0])
        s.clock = (now, done)
    record = {"step": done, **metrics, "tokens_per_s": tok_s, "skipped_total": s.skipped_total,
              "checkpoint_block_s": s.ckpt_block_s}
    if s.block_size is not None:
        record["block_size"] = s.block_size
    if logged(t)(done, done == t.steps):
        s.record = record
        s.log.write(record)
    s.log.print(progress_line(record, t, s.progress.eta()))


def run_eval(s: Session, done: int) -> None:
    """Hook: the held-out loss (one fixed noise draw per batch) as its own record."""
    if not s.eval_sets:
        return
    eval_loss = s.trainer.evaluate(s.state.params, s.eval_sets)
    s.log.write({"step": done, "eval_loss": eval_loss})
    s.log.print(f"step {done}/{s.config.train.steps} | eval loss {eval_loss:.4f}")


def save_checkpoint(s: Session, done: int) -> None:
    """Hook: saves the step (async by default); the loop records how long the step loop was blocked. A step in
    a run of non-finite updates is never saved, so rotation can never push out the last good checkpoint."""
    if s.skipped_in_a_row or int(s.metrics["skipped"]):
        s.log.print(f"not saving step {done}: it is in a run of non-finite steps (the last checkpoint stays the newest)")
    elif (blocked := s.ckpt.save(done, s.state, s.batches.get_state())) is None:
        s.log.print(f"not saving step {done}: its state holds non-finite values")
    else:
        s.ckpt_block_s = blocked


def default_hooks(s: Session) -> list[Hook]:
    """Logging, eval and checkpointing, each on its own cadence. The checkpoint's time-based cadence is
    decided on process 0 and shared, so every host saves the same steps."""
    t = s.config.train
    must_save = lambda done, is_last: is_last or bool(s.stopping) or s.ckpt.due(done)  # noqa: E731
    return [
        Hook("log", lambda done, is_last: s.progress.due(done, force=logged(t)(done, is_last)), log_progress),
        Hook("eval", lambda done, is_last: every(t.eval_every)(done, is_last) and not is_last, run_eval),
        Hook("checkpoint", must_save, save_checkpoint),
    ]


def stop_reason(s: Session, watcher: PreemptionWatcher, done: int, stop_after: int | None, is_last: bool) -> str:
    """Why this invocation ends after step `done` ('' to go on); the same answer on every host."""
    if watcher.should_stop(done):
        return f"received {watcher.signal_name or 'a preemption notice'}"
    if stop_after is not None and done - s.start_step >= stop_after and not is_last:
        return f"stopped after {stop_after} steps as asked"
    return ""


def final_eval(s: Session) -> dict:
    """The end-of-run summary with the final eval over every (batch, noise draw), written as the last record."""
    t = s.config.train
    losses = s.trainer.eval_losses(s.state.params, s.eval_sets, t.eval_draws) if s.eval_sets else [math.nan]
    summary = {
        "step": int(t.steps),
        "train_loss": s.record.get("loss", math.nan),
        "eval_loss": float(np.mean(losses)),
        "eval_loss_se": float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else math.nan,
        "masked_accuracy": s.record.get("masked_accuracy", math.nan),
        "unigram_entropy": s.info["unigram_entropy"],
        "params": s.n_params,
        "wall_s": time.perf_counter() - s.started,
        "skipped_total": s.skipped_total,
    }
    s.log.write({"final": True, **summary})
    return summary


def export_params(s: Session, summary: dict) -> None:
    """Writes WORKDIR/params (what sampling, scoring and conversion read) and prints the closing line."""
    params_export.save_params(s.workdir / "params", s.state.params, s.config, overwrite=True)
    objective = objectives.get(s.config.train.objective)
    s.log.print(
        f"done in {fmt_time(summary['wall_s'])}: "
        + (f"eval loss {summary['eval_loss']:.4f} nats/token ({objective.loss_meaning})"
           if s.eval_sets else "no eval loss (the eval split is empty: the corpus is too small)")
        + f" vs. unigram entropy {s.info['unigram_entropy']:.4f}; "
        + f"{objective.accuracy_meaning} accuracy {summary['masked_accuracy']:.3f}; "
        f"params saved to {s.workdir / 'params'}"
    )


def run(config, workdir, *, quiet: bool = False, stop_after: int | None = None, watcher=None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns a summary.

    `stop_after` ends this invocation (with a checkpoint) after that many steps, for job-time limits: run
    the same command again to continue. SIGTERM/SIGINT are caught from the first line (pass the `watcher`
    the CLI installed even earlier) to the last: before the first step the run ends cleanly with nothing to
    save, in the loop it saves at the next step, during the final eval/export it finishes them. One run at a
    time holds the workdir (a lock file).
    """
    watcher = watcher or PreemptionWatcher(grace_s=config.checkpoint.get("timeout_s", 900))
    try:
        validate(config, jax.device_count())
        workdir = make_workdir(workdir)
        library_noise.log_to(None if "://" in str(workdir) else workdir / STORAGE_LOG)
        with WorkdirLock(workdir, active=jax.process_index() == 0, log=print):
            s = start_session(config, workdir, quiet)
            try:
                return train_session(s, watcher, stop_after)
            finally:
                s.ckpt.close()
    finally:
        watcher.restore()
        library_noise.log_to(None)


def train_session(s: Session, watcher: PreemptionWatcher, stop_after: int | None) -> dict:
    """Restores or initialises, runs the steps with their hooks, then the final eval and the params export."""
    restore_or_init(s)
    if watcher.requested:
        s.log.print(f"received {watcher.signal_name} during start-up; stopped before step {s.start_step + 1} with "
                    "nothing new to save; run the same command to start")
        return {"step": s.start_step, "stopped_early": f"received {watcher.signal_name} during start-up"}
    hooks = default_hooks(s)
    steps = s.config.train.steps
    for step in range(s.start_step, steps):
        done = train_one_step(s, step)
        is_last = done == steps
        s.stopping = stop_reason(s, watcher, done, stop_after, is_last)
        for hook in hooks:
            if hook.due(done, is_last):
                hook.action(s, done)
        if s.stopping:
            s.ckpt.wait()
            s.log.print(f"{s.stopping}: saved step {s.ckpt.latest_step()} to {s.ckpt.directory}; run the same "
                        "command to resume")
            return {"step": done, "stopped_early": s.stopping}
    s.ckpt.wait()
    summary = final_eval(s)
    s.log.close()
    export_params(s, summary)
    if watcher.requested:  # a signal during the final eval/export: both were finished first
        s.log.print(f"received {watcher.signal_name} during the final evaluation/export; finished them before exiting")
    return summary
