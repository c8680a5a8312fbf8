"""benchmarks/device_check.py, the command a lent GPU runs first: every row runs at toy shapes here, and a row
that crashes is marked in the table and fails the exit code (never skipped silently)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, load_benchmark, xla_flags

CHECK = os.path.join(ROOT, "benchmarks", "device_check.py")


def load_check():
    return load_benchmark("device_check")


@pytest.mark.slow
def test_smoke_runs_every_row_and_writes_the_table_and_json(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, CHECK, "--smoke", f"--json={out}"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == list(load_check().ROWS)
    for name in ("train_1b", "max_batch_1b", "layer_8b", "sampler_8b", "scoring", "moe_step"):
        assert rows[name]["status"] == "ok", (name, rows[name])
    assert rows["train_1b"]["figures"]["tokens_per_s"] > 0 and rows["scoring"]["figures"]["speed_up"] > 0
    assert len(rows["sampler_8b"]["figures"]) == 2 * 5  # batches x modes
    assert rows["moe_step"]["figures"]["grouped_matmul"] == "tiled" and rows["moe_step"]["figures"]["worst_load"] >= 1
    assert rows["block_diffusion_step"]["status"] == "ok", rows["block_diffusion_step"]
    assert all(f["tokens_per_s"] > 0 for f in rows["block_diffusion_step"]["figures"].values())
    assert "row                    status" in proc.stdout


def test_a_crashing_row_is_marked_and_fails_the_exit_code(monkeypatch, capsys):
    check = load_check()

    def boom(scale):
        raise RuntimeError("no such kernel\nsecond line")

    def unbuilt(scale):  # every real row exists now; a skipped one still shows after a crash
        raise check.Skipped("the feature does not exist yet")

    monkeypatch.setitem(check.ROWS, "boom", boom)
    monkeypatch.setitem(check.ROWS, "unbuilt", unbuilt)
    assert check.main(["--smoke", "--rows=boom,unbuilt"]) == 1
    out = capsys.readouterr().out
    assert "boom                   FAILED" in out and "RuntimeError: no such kernel" in out
    assert "second line" not in out.split("row                    status")[1]
    assert "unbuilt                SKIPPED" in out
