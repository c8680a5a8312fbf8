"""Sampler modes at equal accuracy: a small model trained on a generated task with checkable answers.

    python benchmarks/sampling_quality.py [--task=sorting --size=6] [--steps=1500] [--workdir=/tmp/quality]
        [--threshold=0.9] [--factor=1.0] [--decode-batch=8] [--config.model.d_model=128 ...]

Trains a byte-level mask predictor with LLaDA's SFT loss on `llada_jax.data.synthetic_tasks` (the answer
right-padded with EOS to --gen-length), or loads it from --workdir when a previous run saved it there, then
decodes a held-out test set with each sampler mode and prints: exact-match accuracy, forward passes per
answer (from the reveal trace: each pass of parallel decoding reveals at least one token of every unfinished
row), forward passes per decoding batch (a batch runs until its slowest row is done; --decode-batch rows at a
time, default the whole test set at once), the cut in forward passes against one token per step, generated
tokens/s (steady state, best of --repeats) and the speed-up over one token per step. The defaults finish in a
few minutes on a 2-core CPU.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llada_jax.checkpoints import params_export
from llada_jax.objectives import losses, masking
from llada_jax.inference import sampling
from llada_jax.models import registry as model_lib
from llada_jax.config import ModelConfig, load_config
from llada_jax.data import synthetic_tasks
from llada_jax.data.vocab import ByteVocabulary

MODEL = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.mlp_hidden=352",
         "model.max_seq_len=32", "model.dtype=float32"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="sorting", choices=synthetic_tasks.TASKS)
    parser.add_argument("--size", type=int, default=6, help="digits or letters per example")
    parser.add_argument("--gen-length", type=int, default=8, help="answer tokens (the answer, then EOS)")
    parser.add_argument("--block-length", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--batch", type=int, default=64, help="training batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--decode-batch", type=int, default=0,
                        help="decode the test set this many rows at a time (a server's batch); 0: all at once")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="save the trained model here; reuse it when present")
    return parser.parse_known_args()


def sft_step(graphdef, tx, mask_id: int, prompt_width: int):
    """One jitted SFT step: mask answer tokens at a random rate t, CE on them weighted 1 / t."""
    def loss_fn(params, tokens, key):
        answer = jnp.arange(tokens.shape[1])[None, :] >= prompt_width
        noisy, masked, p = masking.forward_process(key, tokens, mask_id, 1e-3, maskable=answer)
        logits = model_lib.apply(graphdef, params, noisy)
        return losses.mean_loss(*losses.sft_loss(logits, tokens, masked, p, jnp.broadcast_to(answer, tokens.shape))[:2])

    @jax.jit
    def step(params, opt_state, tokens, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(args, config, train_set, prompt_width):
    cfg = ModelConfig.from_config(config.model)
    graphdef = model_lib.split_model(model_lib.abstract_model(cfg))[0]
    params = model_lib.init_params(cfg, 0)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(100, args.steps // 10), args.steps, args.lr / 20)
    tx = optax.adamw(schedule, weight_decay=0.01)
    opt_state = tx.init(params)
    tokens, _ = synthetic_tasks.encode(train_set, ByteVocabulary(), prompt_width, args.gen_length)
    step = sft_step(graphdef, tx, cfg.mask_token_id, prompt_width)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = tokens[rng.integers(0, len(tokens), args.batch)]
        params, opt_state, loss = step(params, opt_state, jnp.asarray(batch), jax.random.key(i))
        if (i + 1) % max(args.steps // 5, 1) == 0:
            print(f"train step {i + 1}/{args.steps}: loss {float(loss):.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return graphdef, params


def load_or_train(args, overrides, train_set, prompt_width):
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"), MODEL + overrides)
    saved = args.workdir and os.path.exists(os.path.join(args.workdir, "model", "params"))
    if saved:
        graphdef, params, config = params_export.load_model(os.path.join(args.workdir, "model"))
        print(f"loaded the model from {args.workdir}/model")
        return graphdef, params, config
    graphdef, params = train(args, config, train_set, prompt_width)
    if args.workdir:
        params_export.save_params(os.path.join(args.workdir, "model"), params, config)
    return graphdef, params, config


def evaluate(run, n_rows, decode_batch, test_set, prompt_width, repeats):
    """(accuracy, mean passes per answer, mean passes per decoding batch, best steady seconds for all rows).

    `run(start, stop)` decodes rows [start, stop); the last batch is padded with copies of its first row so every
    batch has one shape (one compile), and the copies are dropped."""
    vocab = ByteVocabulary()
    size = decode_batch or n_rows
    starts = range(0, n_rows, size)

    def all_batches():
        return [jax.block_until_ready(run(a, a + size)) for a in starts]

    results = all_batches()  # also compiles
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        all_batches()
        seconds.append(time.perf_counter() - start)
    out = np.concatenate([np.asarray(o) for o, _, _ in results])[:n_rows]
    trace = np.concatenate([np.asarray(t) for _, t, _ in results])[:n_rows]
    answers = [vocab.decode(sampling.crop_at_eos(row[prompt_width:], vocab.eos_id)) for row in out]
    per_row = [len(np.unique(t[t >= 0])) for t in trace]
    per_batch = float(np.mean([int(p) for _, _, p in results]))
    return synthetic_tasks.exact_match(answers, test_set), float(np.mean(per_row)), per_batch, min(seconds)


def rows(array, start, stop):
    """array[start:stop], padded to stop - start rows with copies of row `start`."""
    part = array[start:stop]
    missing = stop - start - part.shape[0]
    return jnp.concatenate([part, jnp.repeat(part[:1], missing, axis=0)]) if missing > 0 else part


def main():
    args, overrides = parse_args()
    overrides = [o.lstrip("-") for o in overrides]
    train_set, test_set = synthetic_tasks.train_test_split(args.task, args.n_train, args.n_test, size=args.size)
    prompt_width = max(len(e.prompt) for e in train_set + test_set)
    graphdef, params, config = load_or_train(args, overrides, train_set, prompt_width)
    tokens, valid = synthetic_tasks.encode(test_set, ByteVocabulary(), prompt_width, args.gen_length)
    prompt, valid = jnp.asarray(tokens[:, :prompt_width]), jnp.asarray(valid)
    g, bl = args.gen_length, args.block_length
    modes = [("one token per step", dict(steps=g)), ("two tokens per step", dict(steps=g // 2)),
             (f"threshold {args.threshold}", dict(steps=g, threshold=args.threshold)),
             (f"factor {args.factor}", dict(steps=g, factor=args.factor)),
             (f"dual cache + threshold {args.threshold}", dict(steps=g, threshold=args.threshold, cache="dual")),
             (f"prefix cache + threshold {args.threshold}", dict(steps=g, threshold=args.threshold, cache="prefix"))]
    n = len(test_set)
    print(f"{jax.devices()[0].device_kind} | task {args.task} size {args.size} | {n} held-out examples "
          f"| gen {g} | block {bl} | temperature 0 | decoding {args.decode_batch or n} rows at a time")
    print(f"{'mode':<32} {'accuracy':>8} {'passes/answer':>13} {'passes/batch':>12} {'pass cut':>8} "
          f"{'tokens/s':>9} {'speed-up':>8}")
    baseline = None
    for name, options in modes:
        run = lambda a, b: sampling.generate(  # noqa: E731
            graphdef, params, rows(prompt, a, b), rows(valid, a, b), jax.random.key(0), gen_length=g,
            block_length=bl, mask_id=config.model.mask_token_id, **options)
        accuracy, per_answer, per_batch, seconds = evaluate(run, n, args.decode_batch, test_set, prompt_width,
                                                            args.repeats)
        baseline = baseline or (seconds, per_batch)
        print(f"{name:<32} {accuracy:>8.1%} {per_answer:>13.2f} {per_batch:>12.2f} {baseline[1] / per_batch:>7.2f}x "
              f"{n * g / seconds:>9,.0f} {baseline[0] / seconds:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
