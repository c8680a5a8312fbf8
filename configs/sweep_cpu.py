"""A CPU-sized IsoFLOP sweep: 3 budgets x 3 depths x (MDM, AR) on CPython's docs, byte-level.

    llada-jax sweep plan --config=configs/sweep_cpu.py --out=runs/sweep
    llada-jax sweep run --sweep=runs/sweep
    llada-jax sweep fit --sweep=runs/sweep
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(__file__))
import tiny  # noqa: E402


def get_config():
    c = tiny.get_config()
    c.model.max_seq_len = 128
    c.train.seq_len = 128
    c.train.global_batch_size = 16
    c.train.log_every = 50
    c.train.eval_every = 0
    c.train.eval_batches = 4
    c.train.eval_draws = 4  # ELBO standard error over 16 (batch, draw) pairs
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 20
    c.checkpoint.every_steps = 0
    c.checkpoint.tensorboard = False

    c.sweep = ml_collections.ConfigDict()
    c.sweep.budgets = (1e12, 3e12, 1e13)  # training FLOPs per run
    c.sweep.depths = (1, 2, 3)  # model sizes: d_model = aspect * depth
    c.sweep.aspect = 64
    c.sweep.head_dim = 32
    c.sweep.objectives = ("mdm", "ar")
    c.sweep.min_steps = 50
    return c
