"""The training loop: data in, jitted steps, progress and metrics out, params exported at the end.

Everything with side effects (reading the corpus, printing, writing files) is here; the math it drives
is in train.py / diffusion.py / model.py.
"""
from __future__ import annotations

import json
import math
import time

import jax
import numpy as np
from etils import epath

from llada_jax import checkpoint, sharding
from llada_jax.config import validate
from llada_jax.data import text_corpus
from llada_jax.data.vocab import get_vocabulary
from llada_jax.train import Trainer


def count_params(abstract_params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLog:
    """Console progress line plus one JSON object per logged step in WORKDIR/metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: epath.Path, quiet: bool = False):
        self.active = jax.process_index() == 0
        self.quiet = quiet
        self.path = workdir / "metrics.jsonl"

    def print(self, text: str) -> None:
        if self.active and not self.quiet:
            print(text, flush=True)

    def write(self, record: dict) -> None:
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def run(config, workdir, *, quiet: bool = False) -> dict:
    """Trains `config` in `workdir`; returns the final summary (also printed and logged)."""
    validate(config, jax.device_count())
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(workdir, quiet)
    t_cfg = config.train

    vocab = get_vocabulary(config)
    stream = text_corpus.token_stream(config, vocab)
    train_stream, eval_stream = text_corpus.split_stream(stream, config.data.eval_fraction, t_cfg.seq_len)
    batches = text_corpus.WindowBatches(train_stream, t_cfg.global_batch_size, t_cfg.seq_len, t_cfg.seed,
                                        jax.process_index(), jax.process_count())
    micro = t_cfg.global_batch_size // t_cfg.grad_accum_steps
    eval_sets = [
        {k: v[jax.process_index() * micro // jax.process_count():(jax.process_index() + 1) * micro // jax.process_count()]
         for k, v in b.items()}
        for b in text_corpus.eval_batches(eval_stream, micro, t_cfg.seq_len, t_cfg.eval_batches)
    ]
    entropy = text_corpus.unigram_entropy(train_stream)

    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    n_params = count_params(trainer.abstract_state.params)
    log.print(
        f"model: {n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s) | corpus {len(train_stream):,} train / {len(eval_stream):,} eval tokens"
        f" | unigram entropy {entropy:.3f} nats/token"
    )
    state = trainer.init_state()

    tokens_per_step = t_cfg.global_batch_size * t_cfg.seq_len
    start = time.perf_counter()
    last_time, last_step = start, 0
    record: dict = {}
    eval_loss = math.nan
    for step in range(t_cfg.steps):
        batch = sharding.global_batch(next(batches), mesh)
        state, metrics = trainer.step(state, batch)
        done = step + 1
        is_last = done == t_cfg.steps
        if done % t_cfg.log_every == 0 or is_last:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            tok_s = (done - last_step) * tokens_per_step / (now - last_time)
            last_time, last_step = now, done
            eta = (t_cfg.steps - done) * tokens_per_step / max(tok_s, 1e-9)
            record = {"step": done, **metrics, "lr": float(trainer.schedule(done - 1)), "tokens_per_s": tok_s}
            if t_cfg.eval_every and done % t_cfg.eval_every == 0 and not is_last:
                record["eval_loss"] = trainer.evaluate(state.params, eval_sets)
            log.write(record)
            log.print(
                f"step {done}/{t_cfg.steps} | loss {metrics['loss']:.4f} | masked acc {metrics['masked_accuracy']:.3f}"
                f" | grad norm {metrics['grad_norm']:.3f} | lr {record['lr']:.2e} | {tok_s:,.0f} tok/s | ETA {_fmt_time(eta)}"
                + (f" | eval {record['eval_loss']:.4f}" if "eval_loss" in record else "")
            )
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"loss became {metrics['loss']} at step {done}; lower optimizer.lr or check the data")

    eval_loss = trainer.evaluate(state.params, eval_sets)
    summary = {
        "step": int(t_cfg.steps),
        "train_loss": record.get("loss", math.nan),
        "eval_loss": eval_loss,
        "masked_accuracy": record.get("masked_accuracy", math.nan),
        "unigram_entropy": entropy,
        "params": n_params,
        "wall_s": time.perf_counter() - start,
    }
    log.write({"final": True, **summary})
    checkpoint.save_params(workdir / "params", state.params, config, overwrite=True)
    log.print(
        f"done in {_fmt_time(summary['wall_s'])}: eval loss {eval_loss:.4f} nats/token (ELBO bound) vs. unigram "
        f"entropy {entropy:.4f}; masked-token accuracy {summary['masked_accuracy']:.3f}; params saved to {workdir / 'params'}"
    )
    return summary
