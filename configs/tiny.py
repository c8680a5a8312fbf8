"""CPU demo: a few-million-parameter byte-level mask predictor on CPython's bundled documentation.

Trains in a few minutes on 2 CPU cores with no download; the loss falls well below the corpus's byte
unigram entropy (the best a model ignoring context can do).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.vocab_size = 320  # 260 byte-level ids, padded so tensor parallelism divides it
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.mlp_hidden = 704
    c.model.max_seq_len = 256
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.mask_token_id = 259
    c.model.eos_token_id = 1
    c.model.pad_token_id = 0

    c.train.steps = 300
    c.train.global_batch_size = 32
    c.train.seq_len = 128
    c.train.log_every = 25
    c.train.eval_every = 100
    c.checkpoint.every_steps = 100

    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.schedule = "wsd"
    c.optimizer.wsd_drop_at = 0.7
    c.optimizer.wsd_drop_ratio = 1.0
    c.optimizer.wsd_decay_from = 0.7
    c.optimizer.final_ratio = 0.1

    c.data.tokenizer = "byte"
    return c
