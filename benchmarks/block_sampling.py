"""Block-diffusion sampler speed (and, given trained models, accuracy) against the full-sequence sampler.

    python benchmarks/block_sampling.py [--config=configs/tiny.py] [--batch=1] [--prompt-length=100]
        [--gen-length=256] [--steps=256] [--block-length=32] [--threshold=0.95] [--config.model.X=Y ...]
    python benchmarks/block_sampling.py --mdm-checkpoint=DIR --bd-checkpoint=DIR --task=sorting --size=4 \
        [--gen-length=8 --steps=8 --block-length=8] [--n-test=256]

Speed (random weights, one model for every row): generated tokens/s of the full-sequence sampler without a
cache and with the dual and prefix caches, and of the block sampler recomputing every column at each step
(the exactness reference) and with its exact cache; forward passes, compile seconds (first call minus a
steady one), steady seconds (best of --repeats, interleaved across modes), speed-ups over the no-cache and dual-cache rows, and the
share of generated tokens the exact cache shares with the recomputing block sampler (100% is the goal:
exact). With `--threshold` the rows use that parallel-decoding rule instead of the step schedule (with
random weights the confidences are low, so it reveals about one token per pass; a trained model's
passes are what `--bd-checkpoint` measures). The prompt length need not be a multiple of the block: the block
sampler then decodes the prompt's last partial block first.

Accuracy: with --mdm-checkpoint (a full-sequence model, e.g. `llada-jax demo`'s) and --bd-checkpoint (one
trained with train.objective=block_diffusion on the same task), each decodes the held-out problems of
`llada_jax.data.synthetic_tasks` (--task, --size, and the demo's split: --train-examples, --seed; greedy, EOS
early stop) in the modes that apply to it, and the table adds exact-match accuracy:

    llada-jax demo --workdir=runs/demo-mdm
    llada-jax demo --objective=block_diffusion --workdir=runs/demo-bd
    python benchmarks/block_sampling.py --mdm-checkpoint=runs/demo-mdm/params --bd-checkpoint=runs/demo-bd/params \
        --gen-length=6 --steps=6 --block-length=6 [--threshold=0.95]

At the goal's lengths (gen 256, block 32), the models configs/demo_long.py trains on 256-token answers:

    llada-jax demo --config=configs/demo_long.py --task=repetition --size=32 --workdir=runs/long-mdm
    llada-jax demo --config=configs/demo_long.py --task=repetition --size=32 --workdir=runs/long-bd \
        --objective=block_diffusion
    python benchmarks/block_sampling.py --mdm-checkpoint=runs/long-mdm/params --bd-checkpoint=runs/long-bd/params \
        --task=repetition --size=32 --gen-length=256 --block-length=32 --threshold=0.95
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llada_jax.config import ModelConfig, decode_block_size, load_config  # noqa: E402
from llada_jax.inference import sampling  # noqa: E402
from llada_jax.models import registry as model_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_MODES = (("full sequence, no cache", dict(cache="none")), ("full sequence, dual cache", dict(cache="dual")),
              ("full sequence, prefix cache", dict(cache="prefix")))
BLOCK_MODES = (("block, recompute all (reference)", dict(cache="none")), ("block, exact cache", dict(cache="exact")))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.py"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mdm-checkpoint", default=None, help="accuracy: a full-sequence model trained on --task")
    parser.add_argument("--bd-checkpoint", default=None, help="accuracy: a block-diffusion model trained on --task")
    parser.add_argument("--task", default="sorting")
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--train-examples", type=int, default=20000, help="the split `llada-jax demo` made (its "
                        "--train-examples, and its train.seed as --seed), so the test problems are its held-out ones")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_known_args(argv)


def time_runs(runs: list, repeats: int) -> list[tuple]:
    """[(tokens [B, P + G], forward passes, compile seconds, best steady seconds)] per closure. The repeats are
    interleaved (mode 1, 2, ..., then again), so a machine shared with other jobs slows every mode alike."""
    first, results = [], []
    for run in runs:
        start = time.perf_counter()
        out, _, passes = jax.block_until_ready(run())
        first.append(time.perf_counter() - start)
        results.append((np.asarray(out), int(passes)))
    best = [float("inf")] * len(runs)
    for _ in range(max(repeats, 1)):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            jax.block_until_ready(run())
            best[i] = min(best[i], time.perf_counter() - start)
    return [(out, passes, max(f - b, 0.0), b) for (out, passes), f, b in zip(results, first, best)]


def modes_for(block_diffusion: bool):
    return [(name, dict(options, block_diffusion=block_diffusion))
            for name, options in (BLOCK_MODES if block_diffusion else FULL_MODES)]


def decode(graphdef, params, config, prompt, valid, args, options, eos_id=None):
    """A closure running one sampler mode on these prompts (the block rows use the model's block length)."""
    common = dict(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                  mask_id=config.model.mask_token_id, threshold=args.threshold, eos_id=eos_id)
    return lambda: sampling.generate(graphdef, params, prompt, valid, jax.random.key(1), **common, **options)


def speed_table(args, overrides) -> list[dict]:
    """Every mode on one random-weights model; prints the table and returns its rows."""
    config = load_config(args.config, overrides)
    cfg = ModelConfig.from_config(config.model)
    graphdef, params = model_lib.graphdef(cfg), model_lib.init_params(cfg, 0)
    prompt = jax.random.randint(jax.random.key(0), (args.batch, args.prompt_length), 3, 200)
    valid = jnp.ones_like(prompt, bool)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind} | model {cfg.d_model}d x {cfg.n_layers}L "
          f"({cfg.dtype}) | batch {args.batch} | prompt {args.prompt_length} | gen {args.gen_length} | steps "
          f"{args.steps} | block {args.block_length} | " + (f"threshold {args.threshold}" if args.threshold
                                                              else "step schedule"))
    header(accuracy=False)
    modes = modes_for(False) + modes_for(True)
    timed = time_runs([decode(graphdef, params, config, prompt, valid, args, o) for _, o in modes], args.repeats)
    rows, reference = [], timed[len(FULL_MODES)][0][:, args.prompt_length:]  # the recomputing block sampler
    for (name, options), (out, passes, compile_s, best) in zip(modes, timed):
        same = float(np.mean(out[:, args.prompt_length:] == reference)) if options["block_diffusion"] else None
        rows.append(dict(mode=name, passes=passes, compile_s=compile_s, seconds=best,
                         tokens_per_s=args.batch * args.gen_length / best, same=same))
        print_row(rows)
    return rows


def header(accuracy: bool) -> None:
    print(f"{'mode':<34} {'passes':>6} {'compile s':>9} {'seconds':>8} {'tokens/s':>9} {'vs none':>7} "
          f"{'vs dual':>7} " + ("accuracy" if accuracy else "same as reference"))


def print_row(rows: list[dict]) -> None:
    """The last row, with its speed-ups over the first two rows (no cache, dual cache)."""
    row = rows[-1]
    ratio = lambda i: f"{row['tokens_per_s'] / rows[i]['tokens_per_s']:>6.2f}x" if len(rows) > i else f"{'':>7}"  # noqa: E731
    last = row.get("accuracy", row.get("same"))
    print(f"{row['mode']:<34} {row['passes']:>6} {row['compile_s']:>9.2f} {row['seconds']:>8.3f} "
          f"{row['tokens_per_s']:>9,.1f} {ratio(0)} {ratio(1)} " + ("" if last is None else f"{last:.1%}"),
          flush=True)


def accuracy_table(args) -> list[dict]:
    """Held-out accuracy and speed of each applicable mode on the two trained models."""
    from llada_jax.checkpoints import params_export
    from llada_jax.data import synthetic_tasks
    from llada_jax.data.vocab import ByteVocabulary

    vocab = ByteVocabulary()
    _, test_set = synthetic_tasks.train_test_split(args.task, args.train_examples, args.n_test, seed=args.seed,
                                                   size=args.size)
    prompt_width = max(len(e.prompt) for e in test_set)
    tokens, valid = synthetic_tasks.encode(test_set, vocab, prompt_width, args.gen_length)
    prompt, valid = jnp.asarray(tokens[:, :prompt_width]), jnp.asarray(valid)
    print(f"accuracy on {len(test_set)} {args.task} problems (size {args.size}) | gen {args.gen_length} | steps "
          f"{args.steps} | block {args.block_length} | greedy, EOS early stop")
    header(accuracy=True)
    rows = []
    for checkpoint in (args.mdm_checkpoint, args.bd_checkpoint):
        graphdef, params, config = params_export.load_model(checkpoint)
        block = decode_block_size(config)
        modes = modes_for(block is not None)
        settings = argparse.Namespace(**{**vars(args), "block_length": block or args.block_length})
        timed = time_runs([decode(graphdef, params, config, prompt, valid, settings, o, eos_id=vocab.eos_id)
                           for _, o in modes], args.repeats)
        for (name, _), (out, passes, compile_s, best) in zip(modes, timed):
            answers = [vocab.decode(sampling.crop_at_eos(r[prompt_width:], vocab.eos_id)) for r in out]
            rows.append(dict(mode=name, passes=passes, compile_s=compile_s, seconds=best,
                             tokens_per_s=len(test_set) * args.gen_length / best,
                             accuracy=synthetic_tasks.exact_match(answers, test_set)))
            print_row(rows)
    return rows


def main(argv=None):
    args, overrides = parse_args(argv)
    if bool(args.mdm_checkpoint) != bool(args.bd_checkpoint):
        raise SystemExit("give both --mdm-checkpoint and --bd-checkpoint (or neither, for the speed table)")
    if args.mdm_checkpoint:
        return accuracy_table(args)
    return speed_table(args, [o.lstrip("-") for o in overrides])


if __name__ == "__main__":
    main()
