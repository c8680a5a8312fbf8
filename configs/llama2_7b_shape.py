"""The Llama2-7B shape (d 4096, 32 layers, 32 heads, MLP 11008, vocab 32000) at 4 x 4096 tokens per chip on
v5p-128 (64 chips, FSDP over all of them): the shape issue 25 compares against MaxText 0.2.5's train_compile.

    llada-jax preflight --config=configs/llama2_7b_shape.py --topology=v5p:4x4x4 [--config.model.remat=save_dots]

prints the per-chip memory and XLA's modeled step time, bytes accessed per layer and for the head, and MFU.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import llada_8b  # noqa: E402


def get_config():
    c = llada_8b.get_config()
    c.model.mlp_hidden = 11008
    c.model.vocab_size = 32000
    c.model.mask_token_id = 31999
    c.model.eos_token_id = 2
    c.model.pad_token_id = 2
    c.model.remat = "full"
    c.train.global_batch_size = 4 * 64  # 4 sequences per chip of v5p:4x4x4
    c.data.tokenizer = "byte"  # no tokenizer is read by preflight; a run would set its own
    return c
