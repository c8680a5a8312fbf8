"""The training loop: data in, jitted steps, checkpoints, progress and metrics out.

Everything with side effects (reading the corpus, checkpoints, signals, printing) is here; the math it
drives is in train.py / diffusion.py / model.py. A run in a workdir that already has checkpoints continues
from the latest; SIGTERM/SIGINT save at the next step boundary and return cleanly.
"""
from __future__ import annotations

import math
import time

import jax
import numpy as np
from etils import epath

from llada_jax import checkpoint, sharding
from llada_jax.config import validate
from llada_jax.data import pipeline
from llada_jax.metrics import MetricsWriter
from llada_jax.progress import Progress, fmt_time
from llada_jax.preemption import PreemptionWatcher
from llada_jax.train import Trainer


def count_params(abstract_params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def progress_line(record: dict, t_cfg, eta: str, ar: bool) -> str:
    """The console line; the AR baseline's loss is a next-token NLL, not the masked-diffusion bound."""
    tok_s = record["tokens_per_s"]
    return (f"step {record['step']}/{t_cfg.steps} | {'NLL' if ar else 'loss'} {record['loss']:.4f} | "
            f"{'next-token' if ar else 'masked'} acc {record['masked_accuracy']:.3f} | grad norm "
            f"{record['grad_norm']:.3f} | lr {record['lr']:.2e} | "
            + (f"{tok_s:,.0f} tok/s" if math.isfinite(tok_s) else "- tok/s") + f" | ETA {eta}"
            + (f" | eval {record['eval_loss']:.4f}" if "eval_loss" in record else "")
            + (f" | skipped {record['skipped_total']}" if record["skipped_total"] else ""))


def build_data(config):
    """(train batch iterator with get_state/set_state, fixed eval batches for this process, info)."""
    return pipeline.build(config, jax.process_index(), jax.process_count())


def run(config, workdir, *, quiet: bool = False, stop_after: int | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a summary.

    `stop_after` ends this invocation (with a checkpoint) after that many steps, for job-time limits: run
    the same command again to continue.
    """
    validate(config, jax.device_count())
    workdir = checkpoint.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_cfg = config.train

    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    ckpt = checkpoint.RunCheckpointer(workdir, config, mesh=mesh)
    log = MetricsWriter(workdir, tensorboard=config.checkpoint.tensorboard, quiet=quiet)
    batches, eval_sets, info = build_data(config)
    n_params = count_params(trainer.abstract_state.params)
    log.print(
        f"model: {n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s) | corpus {info['train_tokens']:,} train / {info['eval_tokens']:,} "
        f"eval tokens | unigram entropy {info['unigram_entropy']:.3f} nats/token"
    )

    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(trainer.sharded_abstract_state())
        batches.set_state(meta["data"])
        log.print(f"resuming from the checkpoint at step {int(state.step)} in {ckpt.directory}")
        changes = checkpoint.schedule_changes(checkpoint.read_config(ckpt.directory / str(int(state.step))), config)
        if changes:
            log.print(f"note: the schedule differs from the checkpoint's ({', '.join(changes)}); training continues "
                      f"from step {int(state.step)} under the new one. To start fresh, use a new --workdir or delete "
                      f"{ckpt.directory}")
    elif t_cfg.init_from:
        params, _ = checkpoint.load_params(t_cfg.init_from, mesh, config)
        state = trainer.state_from_params(params)
        log.print(f"starting from the params in {t_cfg.init_from} (fresh optimizer, step 0)")
    else:
        state = trainer.init_state()
    start_step = int(state.step)

    watcher = PreemptionWatcher()
    tokens_per_step = t_cfg.global_batch_size * t_cfg.seq_len
    progress = Progress(t_cfg.steps, start=start_step)
    start = last_time = time.perf_counter()
    last_step, skipped_in_a_row, skipped_total, ckpt_block_s = start_step, 0, 0, 0.0
    previous_skipped = None  # read one step late so the host never waits for the step it just queued
    record: dict = {}
    stopped_early = ""
    try:
        for step in range(start_step, t_cfg.steps):
            batch = sharding.global_batch(next(batches), mesh)
            if step == start_step:
                log.print("compiling the train step (the first step waits for it) ...")
                state, metrics = jax.block_until_ready(trainer.step(state, batch))
                log.print(f"compiled and ran step {step + 1} in {time.perf_counter() - start:.1f} s")
                last_time, last_step = time.perf_counter(), step + 1  # tokens/s counts steps after compiling
            else:
                state, metrics = trainer.step(state, batch)
            done = step + 1
            is_last = done == t_cfg.steps

            for flag in ([previous_skipped] if previous_skipped is not None else []) + ([metrics["skipped"]] if is_last else []):
                skipped_total += int(flag)
                skipped_in_a_row = skipped_in_a_row + 1 if int(flag) else 0
                if skipped_in_a_row > t_cfg.max_nonfinite_in_a_row:
                    raise FloatingPointError(
                        f"{skipped_in_a_row} steps in a row had a non-finite loss or gradient (up to step {done}); "
                        "lower optimizer.lr, check the data, or resume from an earlier checkpoint"
                    )
            previous_skipped = metrics["skipped"]

            logged = done % t_cfg.log_every == 0 or is_last
            if progress.due(done, force=logged):  # the console hears from the run every few seconds
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                tok_s = math.nan
                if done > last_step:
                    tok_s = (done - last_step) * tokens_per_step / (now - last_time)
                    last_time, last_step = now, done
                record = {"step": done, **metrics, "lr": float(trainer.schedule(done - 1)), "tokens_per_s": tok_s,
                          "skipped_total": skipped_total, "checkpoint_block_s": ckpt_block_s}
                if logged and t_cfg.eval_every and done % t_cfg.eval_every == 0 and not is_last:
                    record["eval_loss"] = trainer.evaluate(state.params, eval_sets)
                if logged:
                    log.write(record)
                log.print(progress_line(record, t_cfg, progress.eta(), ar=t_cfg.objective == "ar"))

            if watcher.should_stop(done):
                stopped_early = f"received {watcher.signal_name or 'a preemption notice'}"
            elif stop_after is not None and done - start_step >= stop_after and not is_last:
                stopped_early = f"stopped after {stop_after} steps as asked"
            if is_last or stopped_early or ckpt.due(done):
                ckpt_block_s = ckpt.save(done, state, batches.get_state())
            if stopped_early:
                ckpt.wait()
                log.print(f"{stopped_early}: saved step {done} to {ckpt.directory}; run the same command to resume")
                return {"step": done, "stopped_early": stopped_early}
    finally:
        watcher.restore()
        ckpt.close()

    losses = trainer.eval_losses(state.params, eval_sets, t_cfg.eval_draws) if eval_sets else [math.nan]
    eval_loss = float(np.mean(losses))
    summary = {
        "step": int(t_cfg.steps),
        "train_loss": record.get("loss", math.nan),
        "eval_loss": eval_loss,
        "eval_loss_se": float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else math.nan,
        "masked_accuracy": record.get("masked_accuracy", math.nan),
        "unigram_entropy": info["unigram_entropy"],
        "params": n_params,
        "wall_s": time.perf_counter() - start,
        "skipped_total": skipped_total,
    }
    log.write({"final": True, **summary})
    log.close()
    checkpoint.save_params(workdir / "params", state.params, config, overwrite=True)
    log.print(
        f"done in {fmt_time(summary['wall_s'])}: "
        + (f"eval loss {eval_loss:.4f} nats/token ({'NLL' if t_cfg.objective == 'ar' else 'ELBO bound'})"
           if eval_sets else "no eval loss (the eval split is empty: the corpus is too small)")
        + f" vs. unigram entropy {info['unigram_entropy']:.4f}; "
        + f"{'next-token' if t_cfg.objective == 'ar' else 'masked-token'} accuracy {summary['masked_accuracy']:.3f}; "
        f"params saved to {workdir / 'params'}"
    )
    return summary

