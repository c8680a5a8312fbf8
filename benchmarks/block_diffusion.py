"""Block diffusion's goals, measured: the 8B step compiled ahead of time for a TPU pod, and answer quality on CPU.

    python benchmarks/block_diffusion.py aot [--topology=v5p:4x4x4] [--seq-len=4096] [--block=32] [--per-chip=2]
    python benchmarks/block_diffusion.py quality [--task=sorting --size=4] [--steps=150] [--blocks=4,8]
        [--n-train=4000 --n-test=200] [--ar-init [--ar-steps=N]] [--shift] [--curve-every=25 [--target=0.95]]
        [--workdir=DIR] [--config.X=Y ...]

aot: compiles configs/llada_8b.py's train step for the topology through libtpu (no TPU needed), once with
train.objective=block_diffusion at --block and once as LLaDA's MDM step at the same seq_len, and prints for each:
whether it fits a chip at --per-chip sequences (XLA's memory analysis against the chip's HBM) and the largest batch
that would, whether the splash kernel is in the program, whether any [.., 2L, 2L] (block diffusion) or [.., L, L]
buffer exists (a scores-like shape, two or more leading dims; it cannot tell one from activations when d_model
equals the column count, which the 8B shape does not do), XLA's FLOPs (cost analysis; it counts the scanned layer
body once, so both steps are counted alike,
and the Pallas kernel's own FLOPs not at all) and the analytic FLOPs per token (the objective's accounting, with the
attention pairs the mask allows). Also the splash tiles the block mask keeps.

quality: trains the demo's model (configs/demo.py) on a generated task through the real training loop, at equal
steps, with LLaDA's full-sequence SFT objective and with block diffusion at each --blocks size, then answers the
held-out problems (the SFT model with LLaDA's sampler over one block, one token per step; the block-diffusion model
block by block, one token per step, with the block sampler `llada-jax sample` uses: inference/block_sampling.py,
exact cache) and prints exact-match accuracy, eval loss and
wall time per run. --ar-init first trains the same architecture autoregressively on the task (train.objective=ar,
model.causal=True, the problems as plain documents) and starts every block-diffusion run from those params as they
are (LLaDA2's AR-to-diffusion recipe at toy scale); its rows are added next to the ones from scratch.
--curve-every=N keeps a checkpoint every N steps of each run and prints held-out accuracy at each, then the first
step at which each run reaches --target (the AR init's claim: fewer steps to the same accuracy).
Curves inside one run mostly follow its learning-rate schedule, so the AR init's step count is best read from
whole runs of N steps. --shift trains the block-diffusion runs with model.logit_shift=True (each position predicted
from the one before it, as the AR model predicts), which is how the README's comparison continues the AR model:
`quality --steps=10 --blocks=4 --ar-init --ar-steps=1500 --shift --config.optimizer.warmup_steps=5`. Without the
shift, LLaDA2's recipe (a short warmup and a block-size curriculum from 1) is the best found:
`quality --steps=40 --blocks=4 --ar-init --ar-steps=1500 --config.optimizer.warmup_steps=5
--config.train.block_schedule=1:0.3,4:0.7` (the overrides reach every run; the AR and full-sequence runs ignore
the block fields).
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def aot_row(name, config, devices):
    from llada_jax.config import ModelConfig
    from llada_jax.objectives import registry as objectives
    from llada_jax.training import preflight

    started = time.perf_counter()
    report, compiled = preflight.analyse_compiled(config, devices)  # the executable too, for its HLO and FLOPs
    hlo = compiled.as_text()
    t = config.train
    columns = 2 * t.seq_len if t.objective == "block_diffusion" and t.block_size < t.seq_len else t.seq_len
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    fpt = objectives.get(t.objective).flops_per_token(ModelConfig.from_config(config.model), t.seq_len,
                                                      t.get("block_size", 32))
    return {"name": name, "compile_s": time.perf_counter() - started, "columns": columns,
            "fits": report["peak_bytes"] <= (report["device_limit_bytes"] or 0),
            "peak_gib": report["peak_bytes"] / 2**30, "limit_gib": (report["device_limit_bytes"] or 0) / 2**30,
            "per_chip": report["sequences_per_device"], "max_per_chip": report["max_sequences_per_device"],
            "splash": "splash" in hlo and "tpu_custom_call" in hlo,
            # scores-like: at least two leading dims (a [4096, 4096] projection weight of the 8B model is not one)
            "square_buffer": bool(re.search(rf"\[(?:[0-9]+,){{2,}}{columns},{columns}\]", hlo)),
            "xla_flops": float(cost.get("flops", 0.0)), "flops_per_token": fpt}


def run_aot(args, overrides):
    from llada_jax.config import load_config
    from llada_jax.models.block_mask import BlockPattern
    from llada_jax.training import preflight

    devices = preflight.topology_devices(args.topology)
    rows = []
    for name, objective in ((f"block diffusion, block {args.block}", "block_diffusion"), ("MDM", "mdm")):
        config = load_config(os.path.join(ROOT, args.config), [
            f"train.objective={objective}", f"train.block_size={args.block}", f"train.seq_len={args.seq_len}",
            f"train.global_batch_size={args.per_chip * len(devices)}", "model.attention=auto", *overrides])
        rows.append(aot_row(name, config, devices))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{devices[0].device_kind} x {len(devices)} ({args.topology}), {args.config}, seq {args.seq_len}, "
          f"{args.per_chip} sequences per chip")
    print(f"{'step':<26} {'fits':>5} {'peak GiB':>9} {'max/chip':>8} {'splash':>6} {'LxL buf':>7} "
          f"{'XLA TFLOP':>10} {'FLOP/token':>11} {'compile s':>9}")
    for r in rows:
        print(f"{r['name']:<26} {str(r['fits']):>5} {r['peak_gib']:>9.2f} {r['max_per_chip']!s:>8} "
              f"{str(r['splash']):>6} {str(r['square_buffer']):>7} {r['xla_flops'] / 1e12:>10.1f} "
              f"{r['flops_per_token'] / 1e9:>10.2f}G {r['compile_s']:>9.0f}")
    bd, mdm = rows
    print(f"block diffusion / MDM: XLA FLOPs {bd['xla_flops'] / mdm['xla_flops']:.3f}x, analytic "
          f"{bd['flops_per_token'] / mdm['flops_per_token']:.3f}x")
    pattern = BlockPattern(args.block, args.seq_len)
    tile = next(size for size in (512, 256, 128) if args.seq_len % size == 0)  # splash's choice
    tiles = pattern.active_tiles(2 * args.seq_len, tile)
    print(f"splash tiles of {tile} over the {2 * args.seq_len} columns: {tiles.sum()} of {tiles.size} active "
          f"({tiles.mean():.1%}); allowed pairs {pattern.allowed_pairs(2 * args.seq_len) / (2 * args.seq_len) ** 2:.1%} "
          f"of the dense square")


def train_task(name, workdir, overrides, log):
    """Trains configs/demo.py with overrides in workdir (reused when its params exist); returns the final summary."""
    from llada_jax.config import load_config
    from llada_jax.training import loop

    config = load_config(os.path.join(ROOT, "configs", "demo.py"), overrides)
    final = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(os.path.join(workdir, "params")):
        log(f"{name}: reusing the run in {workdir}")
        return json.loads(open(final).read().splitlines()[-1])
    started = time.perf_counter()
    summary = loop.run(config, workdir, quiet=True)
    log(f"{name}: trained in {time.perf_counter() - started:.0f} s, eval loss {summary['eval_loss']:.4f}")
    return summary


def answer(checkpoint, test, block):
    """Exact-match accuracy on the held-out problems of a model (a params export or a checkpoint step)."""
    from llada_jax import sharding
    from llada_jax.data import synthetic_tasks
    from llada_jax.eval import generated_tasks as demo
    from llada_jax.inference.loader import InferenceModel

    model = InferenceModel(checkpoint, mesh=sharding.make_mesh(
        {"data": 1, "fsdp": -1, "tensor": 1}))
    model.load(param_dtype=None)
    predictions = demo.solve(model.graphdef, model.params, model.mesh, model.vocab, [e.prompt for e in test],
                             seq_len=model.config.train.seq_len, mask_id=model.mask_id, block_size=block)
    return synthetic_tasks.exact_match(predictions, test)


def curve(run_dir, test, block):
    """[(step, accuracy)] over the run's kept checkpoint steps (--curve-every)."""
    root = os.path.join(run_dir, "checkpoints")
    steps = sorted(int(name) for name in os.listdir(root) if name.isdigit()) if os.path.isdir(root) else []
    return [(step, answer(os.path.join(root, str(step)), test, block)) for step in steps]


def first_step_at(points, accuracy):
    """The first curve step reaching `accuracy`, or None."""
    return next((step for step, value in points if value >= accuracy), None)


def write_documents(path, examples):
    """The task as plain documents ("sort 5391=1359"), for the autoregressive run."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for e in examples:
            f.write(json.dumps({"text": e.prompt + e.answer}) + "\n")
    return path


def quality_runs(args, overrides, train, workdir):
    """[(name, overrides, block for decoding or None)] of the comparison; trains the AR init first if asked."""
    from llada_jax.eval import generated_tasks as demo

    sft_file = demo.write_sft_jsonl(os.path.join(workdir, "task", "train.jsonl"), train)
    common = [f"data.path={sft_file}", f"train.steps={args.steps}", *overrides]
    if args.curve_every:  # keep every checkpoint of the curve
        common += [f"checkpoint.every_steps={args.curve_every}", "checkpoint.keep_last=0"]
    runs = [("full-sequence SFT (LLaDA)", common + ["train.objective=sft"], None)]
    shift = ["model.logit_shift=True"] if args.shift else []
    for block in args.blocks:
        runs.append((f"block diffusion, block {block}" + (", shifted" if args.shift else ""),
                     common + ["train.objective=block_diffusion", f"train.block_size={block}", *shift], block))
    if args.ar_init:
        docs = write_documents(os.path.join(workdir, "task", "documents.jsonl"), train)
        ar = os.path.join(workdir, "ar")
        train_task("autoregressive init", ar, [f"data.path={docs}", "data.source=jsonl", "train.objective=ar",
                                               "model.causal=True", f"train.steps={args.ar_steps or args.steps}",
                                               *overrides], print)
        for name, run_overrides, block in list(runs[1:]):
            runs.append((name + ", from the AR model", run_overrides + [f"train.init_from={ar}/params"], block))
    return runs


def run_quality(args, overrides):
    from llada_jax.data import synthetic_tasks

    workdir = args.workdir or os.path.join("/tmp", f"block_diffusion_quality_{os.getpid()}")
    train, test = synthetic_tasks.train_test_split(args.task, args.n_train, args.n_test, size=args.size)
    rows, curves = [], []
    for i, (name, run_overrides, block) in enumerate(quality_runs(args, overrides, train, workdir)):
        run_dir = os.path.join(workdir, f"run{i}")
        started = time.perf_counter()
        summary = train_task(name, run_dir, run_overrides, print)
        wall = time.perf_counter() - started
        rows.append((name, answer(os.path.join(run_dir, "params"), test, block), summary["eval_loss"], wall))
        print(f"{name}: {rows[-1][1]:.1%} of {len(test)} held-out problems", flush=True)
        if args.curve_every:
            points = curve(run_dir, test, block)
            curves.append((name, points))
            print(f"{name}: held-out accuracy by step " + ", ".join(f"{s} {a:.1%}" for s, a in points), flush=True)
    print(f"\ntask {args.task} size {args.size}, {args.steps} steps of configs/demo.py, {args.n_train} problems, "
          f"{len(test)} held out")
    print(f"{'objective':<48} {'accuracy':>8} {'eval loss':>9} {'wall s':>7}")
    for name, accuracy, loss, wall in rows:
        print(f"{name:<48} {accuracy:>8.1%} {loss:>9.4f} {wall:>7.0f}")
    for name, points in curves:
        reached = first_step_at(points, args.target)
        print(f"{name:<48} first reaches {args.target:.0%} at step "
              + (str(reached) if reached is not None else f"- (not within {args.steps})"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("aot", "quality"))
    parser.add_argument("--topology", default="v5p:4x4x4")
    parser.add_argument("--config", default="configs/llada_8b.py")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--per-chip", type=int, default=2)
    parser.add_argument("--task", default="sorting")
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--blocks", default="4,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--ar-init", action="store_true")
    parser.add_argument("--ar-steps", type=int, default=0, help="quality: steps of the AR init (default: --steps)")
    parser.add_argument("--shift", action="store_true", help="quality: train the block-diffusion runs with "
                        "model.logit_shift=True (each position predicted from the one before, as an AR model does)")
    parser.add_argument("--curve-every", type=int, default=0,
                        help="quality: keep a checkpoint every N steps and print held-out accuracy at each")
    parser.add_argument("--target", type=float, default=0.95, help="quality: the accuracy the curves are read at")
    parser.add_argument("--workdir", default="")
    args, rest = parser.parse_known_args()
    overrides = [o[len("--config."):] if o.startswith("--config.") else o for o in rest]
    (run_aot if args.mode == "aot" else run_quality)(args, overrides)


if __name__ == "__main__":
    main()
