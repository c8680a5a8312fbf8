"""The first-run demo: a 0.94M-parameter byte-level mask predictor learns to sort digits on a CPU.

Run: `llada-jax demo` (it writes the task data into --workdir=runs/demo, trains with the SFT objective,
then solves held-out problems with the reverse process and prints the accuracy). Every field can be
overridden as usual, e.g. `--config.train.steps=300`; tests/test_demo.py guards a shortened run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.model.vocab_size = 320  # 260 byte-level ids, padded so tensor parallelism divides it
    c.model.d_model = 128
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.mlp_hidden = 384
    c.model.max_seq_len = 32
    c.model.dtype = "float32"  # CPUs have no fast bfloat16 matmuls
    c.model.mask_token_id = 259
    c.model.eos_token_id = 1
    c.model.pad_token_id = 0

    c.train.objective = "sft"  # the prompt ("sort 5391=") is never masked; the answer and its EOS padding are
    c.train.steps = 600
    c.train.global_batch_size = 64
    c.train.seq_len = 16  # "sort 5391=" + "1359" + EOS padding (3-digit addition fits too: "999+999=1998")
    c.train.block_size = 4  # with `llada-jax demo --objective=block_diffusion`: blocks of 4 of the 16 positions
    c.train.log_every = 50
    c.train.eval_every = 0  # the eval loss once, at the end
    c.checkpoint.every_steps = 200
    c.checkpoint.tensorboard = False

    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "wsd"
    c.optimizer.wsd_drop_at = 0.8
    c.optimizer.wsd_drop_ratio = 1.0
    c.optimizer.wsd_decay_from = 0.8
    c.optimizer.final_ratio = 0.05
    c.optimizer.weight_decay = 0.0

    c.data.tokenizer = "byte"
    c.data.source = "sft_jsonl"  # data.path is set by `llada-jax demo` to the file it generates
    c.data.chat_template = "task"  # the bare prompt (llada_jax/data/chat.py)
    c.data.eval_fraction = 0.02
    return c
