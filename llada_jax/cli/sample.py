"""Generate text with the reverse process: `llada-jax sample --checkpoint=DIR --prompt="..."`.

A checkpoint trained with train.objective=block_diffusion decodes block by block (its block size, an exact
cache of finished blocks: inference/block_sampling.py); any other decodes exactly as before.

Params are sharded FSDP-style over the devices present, whatever mesh trained them (override with
--config.mesh.fsdp=4 --config.mesh.tensor=2 etc.), and the decoder runs under that mesh, so the model's
sharding hints apply as in training.
"""
from __future__ import annotations

import argparse
import time


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="params export, run workdir or checkpoint step")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", help="a UTF-8 text file with one prompt per line (added to --prompt)")
    parser.add_argument("--gen-length", type=int, default=128, help="tokens to generate after each prompt")
    parser.add_argument("--steps", type=int, default=128,
                        help="reverse-process steps in all (split evenly over the blocks)")
    parser.add_argument("--block-length", type=int, default=None,
                        help="tokens decoded per block, left to right (default 32, must divide --gen-length; "
                             "a block-diffusion model: its block size, need not divide)")
    parser.add_argument("--temperature", type=float, default=0.0, help="Gumbel noise on the logits; 0 is greedy")
    parser.add_argument("--cfg-scale", type=float, default=0.0,
                        help="classifier-free guidance (the unconditional pass masks the prompt); 0 is off")
    parser.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence",
                        help="which predictions each step reveals: the most confident, or random ones")
    parallel = parser.add_mutually_exclusive_group()
    parallel.add_argument("--threshold", type=float, default=None,
                          help="parallel decoding: reveal every token above this confidence (at least one per step)")
    parallel.add_argument("--factor", type=float, default=None,
                          help="parallel decoding, Fast-dLLM's factor rule: reveal the n most confident tokens while "
                               "the i-th has confidence >= 1 - factor / (i + 1)")
    parser.add_argument("--cache", choices=["auto", "none", "prefix", "dual", "exact"], default="auto",
                        help="full-sequence model: reuse keys/values within a block, of the prompt (prefix) or of "
                             "everything but the block (dual), approximate and faster; block-diffusion model: "
                             "exact (finished blocks) or none. auto: none / exact")
    parser.add_argument("--param-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="cast params once at load (auto: bfloat16 on GPU/TPU, as stored on CPU)")
    parser.add_argument("--no-early-stop", action="store_true",
                        help="decode every block even after each answer holds an EOS (the cropped text is the same)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the noise (temperature, random remasking)")
    parser.add_argument("--trace", default=None, metavar="PNG", help="write which position was revealed at which step")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --trace file")


def read_prompts(args) -> list[str]:
    from llada_jax.config import ConfigError
    from llada_jax.utils.input_files import read_text

    prompts = list(args.prompt)
    if args.prompt_file:
        text = read_text(args.prompt_file, flag="--prompt-file", what="a text file with one prompt per line")
        prompts += [line for line in text.split("\n") if line.strip()]
    if not prompts:
        raise ConfigError("no prompt given; pass --prompt=TEXT (repeatable) or --prompt-file=FILE")
    return prompts


def check_args(args, max_seq_len: int, longest_prompt: int, model_block: int | None = None) -> None:
    """Flag-level mistakes, each as one sentence naming the flag (before anything is loaded or compiled).
    `model_block`: a block-diffusion model's block size (the default --block-length; its blocks need not tile
    the answer)."""
    from llada_jax.config import ConfigError

    if args.block_length is None:
        args.block_length = model_block or 32
    if args.gen_length <= 0 or args.block_length <= 0 or args.steps <= 0:
        raise ConfigError("--gen-length, --block-length and --steps must be positive")
    if model_block is None:
        _check_tiling(args)
    allowed = ("auto", "none", "prefix", "dual") if model_block is None else ("auto", "exact", "none")
    if args.cache not in allowed:
        kind = "a full-sequence model" if model_block is None else "a block-diffusion model"
        raise ConfigError(f"--cache={args.cache} does not apply to {kind}; use one of {', '.join(allowed)}")
    _check_rules(args)
    if longest_prompt + args.gen_length > max_seq_len:
        raise ConfigError(
            f"prompt ({longest_prompt} tokens) + --gen-length={args.gen_length} exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten one of them")


def _check_tiling(args) -> None:
    """The full-sequence sampler's schedule: blocks tile the answer and steps split over the blocks."""
    from llada_jax.config import ConfigError

    if args.gen_length % args.block_length:
        raise ConfigError(f"--gen-length={args.gen_length} is not a multiple of --block-length={args.block_length}")
    blocks = args.gen_length // args.block_length
    if args.steps % blocks:
        raise ConfigError(f"--steps={args.steps} does not split over {blocks} blocks; use a multiple of {blocks}")


def _check_rules(args) -> None:
    from llada_jax.config import ConfigError

    if args.temperature < 0 or args.cfg_scale < 0:
        raise ConfigError("--temperature and --cfg-scale must be >= 0")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise ConfigError(f"--threshold={args.threshold} is not a confidence; give a value in (0, 1], e.g. 0.9")
    if args.factor is not None and args.factor <= 0:
        raise ConfigError(f"--factor={args.factor} must be positive (Fast-dLLM uses about 1)")


def block_note(model_block: int, args) -> str:
    """What a block-diffusion checkpoint's decoding does, said once (and a block size other than the model's)."""
    cache = {"auto": "exact", "exact": "exact"}.get(args.cache, args.cache)
    how = "an exact cache of finished blocks" if cache == "exact" else "every position recomputed at each step"
    note = f"sample: block-diffusion model: decoding block by block (block {args.block_length}) with {how}"
    if args.block_length != model_block:
        note += f"; the model was trained with block {model_block}, so --block-length={args.block_length} decodes " \
                "with a block pattern it was not trained on"
    return note


def run(args, overrides) -> int:
    from llada_jax.checkpoints import locate
    from llada_jax.utils import output_dirs

    locate.resolve(args.checkpoint)  # mistakes in the flags are said at once, before JAX loads
    prompts = read_prompts(args)
    if args.trace:
        output_dirs.check_file(args.trace, flag="--trace", overwrite=args.overwrite)  # before minutes of decoding
    import jax

    from llada_jax.inference import export_cache, sampling
    from llada_jax.inference.loader import InferenceModel
    from llada_jax.utils.progress import stderr

    model = InferenceModel(args.checkpoint, overrides)
    vocab, config, mesh = model.vocab, model.config, model.mesh
    encoded = [vocab.encode(p) for p in prompts]
    check_args(args, model.max_len, max(len(e) for e in encoded), model.block_size)
    model.load(args.param_dtype)
    if model.attention_note:
        stderr(f"sample: {model.attention_note}")
    if model.block_size is not None:
        stderr(block_note(model.block_size, args))
    graphdef, params = model.graphdef, model.params
    ids, valid = sampling.left_pad(encoded, vocab.pad_id)
    decode, options = sampling.decoder(
        graphdef, gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
        temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
        mask_id=model.mask_id, threshold=args.threshold, factor=args.factor, cache=args.cache,
        eos_id=None if args.no_early_stop else vocab.eos_id, block_diffusion=model.block_size is not None)
    began = time.perf_counter()
    with jax.set_mesh(mesh):
        inputs = (params, ids, valid, jax.random.key(args.seed))
        program, cached = export_cache.load_or_export("sample", decode, inputs,
                                                      dict(options, model=config.model.to_dict()))
        stderr(f"sample: decoding {len(prompts)} x {args.gen_length} tokens in up to {args.steps} forward passes "
               + ("(the traced decoder came from the cache) ..." if cached else "(compiling the decoder first) ..."))
        out, trace, passes = program.call(*inputs)
    for prompt, row in zip(prompts, jax.device_get(out)):
        text = vocab.decode(sampling.crop_at_eos(row[ids.shape[1]:], vocab.eos_id))
        print(f"=== {prompt}\n{text}")
    print(f"({int(passes)} forward passes for {len(prompts)} x {args.gen_length} tokens, "
          f"{time.perf_counter() - began:.1f} s with the compilation)")
    if args.trace:
        from llada_jax.inference import trace_plot

        legend = trace_plot.save(jax.device_get(trace)[:, ids.shape[1]:], args.trace, args.block_length)
        print(f"reveal trace written to {args.trace}: {legend}")
    return 0
