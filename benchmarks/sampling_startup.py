"""Start-up of `llada-jax sample` with and without JAX's persistent compilation cache.

    python benchmarks/sampling_startup.py --checkpoint=DIR [--gen-length=128 --steps=128 --block-length=32
        --cache=dual]

Runs the sample command's own path (llada_jax.cli.main) twice, each in a fresh process sharing one new cache
directory, and prints per run: imports, load (checkpoint, params), the first call (trace + compile or cache
hit + decode), a second call (decode only), and start-up = imports + load + first call - decode.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(argv):
    """One process: time the phases of a sample command (the CLI module, then the decode twice)."""
    start = time.perf_counter()
    from llada_jax import compile_cache  # noqa: F401  (imports jax)
    from llada_jax.cli import main
    import llada_jax.cli.sample as sample_cli  # noqa: F401
    import llada_jax.checkpoint  # noqa: F401
    import llada_jax.sampling as sampling

    imported = time.perf_counter()
    calls = []
    original = sampling.generate

    def timed(*args, **kw):
        import jax

        t = time.perf_counter()
        out = jax.block_until_ready(original(*args, **kw))
        calls.append((t, time.perf_counter()))
        if len(calls) == 1:
            t = time.perf_counter()
            jax.block_until_ready(original(*args, **kw))
            calls.append((t, time.perf_counter()))
        return out

    sampling.generate = timed
    rc = main(["sample", *argv])
    first, second = (b - a for a, b in calls)
    phases = {"imports": imported - start, "load": calls[0][0] - imported, "first call": first,
              "decode": second, "rc": rc}
    phases["start-up"] = phases["imports"] + phases["load"] + first - second
    print("PHASES " + json.dumps(phases))


def main():
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    args, rest = parser.parse_known_args()
    cache = tempfile.mkdtemp(prefix="llada_jax_cache_")
    env = dict(os.environ, LLADA_JAX_COMPILATION_CACHE=cache)
    cmd = [sys.executable, __file__, "--child", f"--checkpoint={args.checkpoint}", "--prompt=def f(", *rest]
    rows = []
    for run in (1, 2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [l for l in done.stdout.splitlines() if l.startswith("PHASES ")]
        if done.returncode or not line:
            sys.exit(f"run {run} failed: {done.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(line[0][7:]))
    print(f"{'run':<5}" + "".join(f"{k:>12}" for k in ("imports", "load", "first call", "decode", "start-up")))
    for run, r in enumerate(rows, 1):
        print(f"{run:<5}" + "".join(f"{r[k]:>11.2f}s" for k in ("imports", "load", "first call", "decode", "start-up")))
    print(f"second start-up / first: {rows[1]['start-up'] / rows[0]['start-up']:.2f} (cache in {cache})")


if __name__ == "__main__":
    main()
