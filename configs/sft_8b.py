"""SFT of LLaDA 8B as in the paper: 4.5M pairs x 3 epochs at batch 256 (52,734 steps), seq 4096.

lr warm-up over 50 iterations to 2.5e-5, held, then linear to 2.5e-6 over the final 10%; wd 0.1. The prompt
is never masked; responses are EOS-padded and the loss is normalised by response length. Start from a
pretrained checkpoint with --init_from.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import llada_8b  # noqa: E402


def get_config():
    c = llada_8b.get_config()
    c.train.objective = "sft"
    c.train.steps = 52734
    c.train.global_batch_size = 256
    c.train.random_length_fraction = 0.0
    c.train.eval_every = 1000
    c.optimizer.lr = 2.5e-5
    c.optimizer.warmup_steps = 50
    c.optimizer.wsd_drop_at = 0.9
    c.optimizer.wsd_drop_ratio = 1.0
    c.optimizer.wsd_decay_from = 0.9
    c.optimizer.final_ratio = 0.1
    c.data.source = "sft_jsonl"
    return c
