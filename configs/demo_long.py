"""The demo at LLaDA's generation length: 256-token answers (the repetition task), for sampler speed at equal accuracy.

    llada-jax demo --config=configs/demo_long.py --task=repetition --size=32 --workdir=runs/long-mdm
    llada-jax demo --config=configs/demo_long.py --task=repetition --size=32 --workdir=runs/long-bd \
        --objective=block_diffusion
    python benchmarks/block_sampling.py --mdm-checkpoint=runs/long-mdm/params --bd-checkpoint=runs/long-bd/params \
        --task=repetition --size=32 --gen-length=256 --block-length=32 --threshold=0.95

The samplers' caches only matter when the answer is long: benchmarks/block_sampling.py compares the full-sequence
sampler (no cache, dual cache) with the block sampler's exact cache at gen 256 and block 32 on these two models,
and sorting's 4-digit answers are too short for that. "rep " + 32 letters + "=" is 37 tokens, its answer the letters
8 times (256), so a row is 320 positions (10 blocks of 32, the last 27 EOS padding). configs/demo.py's model and
optimizer with 16 rows a step, since a row is 20 times longer: on a 2-core CPU about 13 minutes (full sequence) and
22 minutes (block diffusion, two streams). The demo's own check decodes the whole answer as one block, one token
per step, which the full-sequence model gets right about half the time; in blocks of 32 (the benchmark) it does not
miss.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import demo  # noqa: E402


def get_config():
    c = demo.get_config()
    c.model.max_seq_len = 320
    c.train.seq_len = 320
    c.train.block_size = 32  # LLaDA2.0's inference block, with --objective=block_diffusion
    c.train.global_batch_size = 16
    c.train.steps = 600
    c.train.log_every = 100
    c.checkpoint.every_steps = 500
    return c
