"""LLaDA 8B pretraining as in the paper: 32 x 4096, MHA, SwiGLU 12288; 2.3T tokens at seq 4096, batch 1280.

AdamW (wd 0.1), lr warm-up over 2000 iterations to 4e-4, held to 1.2T tokens, 1e-4 to 2.0T, then linear to
1e-5 (base.py's wsd fractions). 2.3T / (1280 * 4096) = 438,690 steps.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.vocab_size = 126464
    c.model.d_model = 4096
    c.model.n_layers = 32
    c.model.n_heads = 32
    c.model.n_kv_heads = 32
    c.model.mlp_hidden = 12288
    c.model.max_seq_len = 4096
    c.model.dtype = "bfloat16"
    c.model.remat = "save_dots"

    c.train.steps = 438690
    c.train.global_batch_size = 1280
    c.train.seq_len = 4096
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.optimizer.lr = 4e-4
    c.optimizer.warmup_steps = 2000
    c.data.tokenizer = "hf"  # the official LLaDA tokenizer.json: set data.tokenizer_path to its local folder
    return c
