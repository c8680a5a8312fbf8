"""Generate text with the reverse process: `llada-jax sample --checkpoint=DIR --prompt="..."`."""
from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="params export, run workdir or checkpoint step")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", help="one prompt per line")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    parser.add_argument("--threshold", type=float, default=None,
                        help="reveal every token above this confidence (at least one per step)")
    parser.add_argument("--kv-cache", action="store_true",
                        help="reuse keys/values of the prompt and finished blocks within a block (approximate, faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, metavar="PNG", help="write which position was revealed at which step")


def check_args(args, max_seq_len: int, longest_prompt: int) -> None:
    from llada_jax.config import ConfigError

    if args.gen_length <= 0 or args.block_length <= 0 or args.steps <= 0:
        raise ConfigError("--gen-length, --block-length and --steps must be positive")
    if args.gen_length % args.block_length:
        raise ConfigError(f"--gen-length={args.gen_length} is not a multiple of --block-length={args.block_length}")
    blocks = args.gen_length // args.block_length
    if args.steps % blocks:
        raise ConfigError(f"--steps={args.steps} does not split over {blocks} blocks; use a multiple of {blocks}")
    if longest_prompt + args.gen_length > max_seq_len:
        raise ConfigError(
            f"prompt ({longest_prompt} tokens) + --gen-length={args.gen_length} exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten one of them")


def run(args, overrides) -> int:
    import jax

    from llada_jax import checkpoint, sampling
    from llada_jax.config import ConfigError
    from llada_jax.data.vocab import get_vocabulary

    prompts = list(args.prompt)
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ConfigError("no prompt given; pass --prompt=TEXT (repeatable) or --prompt-file=FILE")
    graphdef, params, config = checkpoint.load_model(args.checkpoint)
    vocab = get_vocabulary(config)
    encoded = [vocab.encode(p) for p in prompts]
    check_args(args, config.model.max_seq_len, max(len(e) for e in encoded))
    ids, valid = sampling.left_pad(encoded, vocab.pad_id)
    out, trace, passes = sampling.generate(
        graphdef, params, ids, valid, jax.random.key(args.seed), gen_length=args.gen_length, steps=args.steps,
        block_length=args.block_length, temperature=args.temperature, cfg_scale=args.cfg_scale,
        remasking=args.remasking, mask_id=config.model.mask_token_id, threshold=args.threshold, kv_cache=args.kv_cache)
    for prompt, row in zip(prompts, jax.device_get(out)):
        text = vocab.decode(sampling.crop_at_eos(row[ids.shape[1]:], vocab.eos_id))
        print(f"=== {prompt}\n{text}")
    print(f"({int(passes)} forward passes for {len(prompts)} x {args.gen_length} tokens)")
    if args.trace:
        from llada_jax import trace_plot

        trace_plot.save(jax.device_get(trace)[:, ids.shape[1]:], args.trace, args.block_length)
        print(f"reveal trace written to {args.trace}")
    return 0
