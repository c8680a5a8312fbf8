"""Start-up of `llada-jax sample` with and without JAX's persistent compilation cache.

    python benchmarks/sampling_startup.py --checkpoint=DIR [--gen-length=128 --steps=128 --block-length=32
        --cache=dual] [--no-stored-trace]

Runs the sample command's own path (llada_jax.cli.main) twice, each in a fresh process sharing one new cache
directory, and prints per run: imports, load (checkpoint, params), the first call (trace + compile, or the
stored trace and compiled program from the caches, + decode), a second call (decode only), start-up = load +
first call - decode (the issue's "load + compile": what the caches can change) and the same with the imports
added (the whole wait before decoding).
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
    from llada_jax.utils import compile_cache  # noqa: F401  (imports jax)
    from llada_jax.cli import main
    import llada_jax.cli.sample as sample_cli  # noqa: F401
    import llada_jax.inference.loader  # noqa: F401
    import llada_jax.inference.export_cache as export_cache

    imported = time.perf_counter()
    calls = []
    original = export_cache.load_or_export

    def timed(*args, **kw):
        """The sample command's decoder: trace (or read the stored trace) + compile + decode, then decode again."""
        import jax

        t = time.perf_counter()
        program, cached = original(*args, **kw)
        inputs = args[2]
        jax.block_until_ready(program.call(*inputs))
        calls.append((t, time.perf_counter()))
        t = time.perf_counter()
        jax.block_until_ready(program.call(*inputs))
        calls.append((t, time.perf_counter()))
        return program, cached

    export_cache.load_or_export = timed
    if os.environ.get("SAMPLING_STARTUP_NO_STORED_TRACE"):
        export_cache.export_dir = lambda: None  # compiled programs cached, traces not: the jit path's cost
    rc = main(["sample", *argv])
    first, second = (b - a for a, b in calls)
    phases = {"imports": imported - start, "load": calls[0][0] - imported, "first call": first,
              "decode": second, "rc": rc}
    phases["start-up"] = phases["load"] + first - second
    phases["with imports"] = phases["imports"] + phases["start-up"]
    print("PHASES " + json.dumps(phases))


def main():
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--no-stored-trace", action="store_true",
                        help="cache compiled programs only (every run traces the decoder again)")
    args, rest = parser.parse_known_args()
    cache = tempfile.mkdtemp(prefix="llada_jax_cache_")
    env = dict(os.environ, LLADA_JAX_COMPILATION_CACHE=cache)
    if args.no_stored_trace:
        env["SAMPLING_STARTUP_NO_STORED_TRACE"] = "1"
    cmd = [sys.executable, __file__, "--child", f"--checkpoint={args.checkpoint}", "--prompt=def f(", *rest]
    rows = []
    for run in (1, 2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [l for l in done.stdout.splitlines() if l.startswith("PHASES ")]
        if done.returncode or not line:
            sys.exit(f"run {run} failed: {done.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(line[0][7:]))
    columns = ("imports", "load", "first call", "decode", "start-up", "with imports")
    print(f"{'run':<5}" + "".join(f"{k:>13}" for k in columns))
    for run, r in enumerate(rows, 1):
        print(f"{run:<5}" + "".join(f"{r[k]:>12.2f}s" for k in columns))
    print(f"second start-up / first: {rows[1]['start-up'] / rows[0]['start-up']:.2f} (load + compile), "
          f"{rows[1]['with imports'] / rows[0]['with imports']:.2f} with the imports (cache in {cache})")


if __name__ == "__main__":
    main()
