"""Train a small model on a generated task, then solve held-out problems: `llada-jax demo --workdir=runs/demo`."""
from __future__ import annotations

import argparse
import os

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "demo.py")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder for the task data, metrics and params")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config (the demo's by default)")
    parser.add_argument("--task", default="sorting", help="sorting, addition, reversal or repetition")
    parser.add_argument("--size", type=int, default=4,
                        help="digits (sorting, addition) or letters (reversal, repetition)")
    parser.add_argument("--train-examples", type=int, default=20000, help="generated training problems")
    parser.add_argument("--test-examples", type=int, default=200, help="held-out problems solved at the end")
    parser.add_argument("--show", type=int, default=8, help="solved examples to print")
    parser.add_argument("--quiet", action="store_true", help="no training progress, only the result")
    parser.add_argument("--objective", choices=("sft", "block_diffusion"), default=None,
                        help="train with LLaDA's SFT (the demo config's default) or block diffusion (blocks of "
                             "train.block_size, 4 in the demo config, decoded block by block)")
    parser.epilog = "Override any config field with --config.SECTION.FIELD=VALUE, e.g. --config.train.steps=300."


def run(args, overrides) -> int:
    from llada_jax.config import ConfigError, load_config, validate

    if args.train_examples <= 0 or args.test_examples <= 0 or args.show < 0:
        raise ConfigError("--train-examples and --test-examples must be positive and --show >= 0")
    if args.objective:
        overrides = [f"train.objective={args.objective}"] + list(overrides)
    config = load_config(args.config, overrides)
    validate(config)  # field errors before anything heavy is imported
    from llada_jax.data import synthetic_tasks
    from llada_jax.eval import generated_tasks as demo

    train, test = synthetic_tasks.train_test_split(args.task, args.train_examples, args.test_examples,
                                                   seed=config.train.seed, size=args.size)
    config.data.path = demo.write_sft_jsonl(os.path.join(os.path.abspath(args.workdir), "task", "train.jsonl"),
                                            train)
    print(f"demo: {len(train):,} generated {args.task} problems to learn (e.g. {train[0].prompt}{train[0].answer}), "
          f"{len(test)} others held out to test on", flush=True)

    from llada_jax import sharding
    from llada_jax.inference.loader import InferenceModel
    from llada_jax.training import loop
    from llada_jax.utils import progress

    loop.run(config, args.workdir, quiet=args.quiet)
    model = InferenceModel(os.path.join(os.path.abspath(args.workdir), "params"), mesh=sharding.make_mesh(config.mesh))
    model.load(param_dtype=None)  # the trained float32 params, as the training run evaluated them
    t = model.config.train
    # a block-diffusion model decodes as `llada-jax sample` does, block by block; model.block_size is None for a
    # full-sequence model, a block of the whole row included (config.decode_block_size), which LLaDA's sampler decodes
    block = model.block_size
    with progress.timed(f"demo: answering the {len(test)} held-out problems with the reverse process"
                        + (f" in blocks of {block}" if block else "") + " (compiling the sampler first)"):
        predictions = demo.solve(model.graphdef, model.params, model.mesh, model.vocab, [e.prompt for e in test],
                                 seq_len=t.seq_len, mask_id=model.mask_id, block_size=block)
    print("\n".join(demo.report(test, predictions, args.show, demo.prompt_blind_accuracy(train, test))))
    return 0
