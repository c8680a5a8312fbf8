"""Block diffusion through the trainer and the loop: exact gradient accumulation, the same step on 1 device and on an
fsdp x tensor mesh, a block-size curriculum that compiles once per distinct size and resumes at the right size,
pretraining on packed documents and SFT on conversations end to end, and the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import sharding
from llada_jax.checkpoints import params_export
from llada_jax.config import ModelConfig
from llada_jax.models import registry as M
from llada_jax.objectives import registry as R
from llada_jax.training import loop
from llada_jax.training.step import accumulate_gradients, split_micro_batches
from llada_jax.training.trainer import Trainer

from helpers import small_config

BD = ("train.objective=block_diffusion", "train.block_size=4")
QUIET = ("checkpoint.tensorboard=False", "train.eval_batches=1")


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def sft_batch(batch=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    prompt = np.arange(length)[None, :] < rng.integers(2, 7, batch)[:, None]
    seg = (np.arange(length)[None, :] < rng.integers(8, length, batch)[:, None]).astype(np.int32)
    return {"tokens": rng.integers(3, 250, (batch, length)).astype(np.int32), "prompt_mask": prompt,
            "segment_ids": seg}


def test_accumulated_gradients_equal_the_micro_batches_done_by_hand():
    """With complementary SFT masks (each example counted twice): the step's gradient is the sum of the micro-batch
    gradients (micro-batch i: rows i, i + n, ...; key folded with i) divided once by the summed weights."""
    config = small_config(*BD, "model.dtype=float32", "train.complementary_masks=True", "train.grad_accum_steps=4")
    cfg = ModelConfig.from_config(config.model)
    graphdef, params, _ = M.split_model(M.build(cfg, __import__("flax").nnx.Rngs(0)))
    batch = {k: jnp.asarray(v) for k, v in sft_batch().items()}
    key = jax.random.key(5)
    grads, aux = accumulate_gradients(graphdef, config, params, batch, key)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, mb, k: R.compute_loss(graphdef, config, p, mb, k), has_aux=True))
    total, weight, sums = 0.0, 0.0, None
    for i in range(4):
        micro = jax.tree.map(lambda x: x[i::4], batch)
        assert all(np.array_equal(m, x[i]) for m, x in zip(jax.tree.leaves(micro),
                                                            jax.tree.leaves(split_micro_batches(batch, 4))))
        (loss_sum, a), g = grad_fn(params, micro, jax.random.fold_in(key, i))
        total, weight = total + float(loss_sum), weight + float(a["loss_weight"])
        sums = g if sums is None else jax.tree.map(jnp.add, sums, g)
    assert weight == float(aux["loss_weight"]) == 16  # 2 rows per example
    np.testing.assert_allclose(float(aux["loss_sum"]), total, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(sums)):
        np.testing.assert_allclose(got, want / weight, rtol=1e-5, atol=1e-7)


def test_sharded_two_stream_step_equals_one_device():
    config = small_config(*BD, "model.dtype=float32", "mesh.fsdp=4", "mesh.tensor=2")
    batch = {"tokens": np.random.default_rng(1).integers(3, 250, (8, 16)).astype(np.int32)}
    losses = []
    for mesh in (sharding.make_mesh(config.mesh), sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                                      jax.devices()[:1])):
        trainer = Trainer(config, mesh)
        state = trainer.init_state()
        for _ in range(2):
            state, metrics = trainer.step(state, sharding.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


SCHEDULE = ("train.steps=8", "train.block_schedule=1:0.25,16:0.25,4:0.25,1:0.25", "checkpoint.every_steps=0",
            "mesh.fsdp=4", "mesh.tensor=2")


@pytest.mark.slow
def test_block_curriculum_compiles_once_per_size_and_resumes_at_the_right_size(tmp_path):
    """Sizes 1, 16 (= seq_len: one stream), 4, then 1 again: three compiled steps, each compiled once; a run stopped
    inside the third phase resumes with block 4 and ends bitwise equal to the uninterrupted run."""
    config = small_config(*BD, *QUIET, *SCHEDULE)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    compiled = {}
    original = Trainer.compiled_step

    def spy(self, block_size):
        fn = original(self, block_size)
        compiled[(str(self.mesh.shape), block_size)] = fn
        return fn

    Trainer.compiled_step = spy
    try:
        loop.run(config, straight, quiet=True)
        assert sorted(b for _, b in compiled) == [1, 4, 16]
        assert all(fn._cache_size() == 1 for fn in compiled.values())  # no size compiled twice
        loop.run(config, resumed, quiet=True, stop_after=5)
        loop.run(config, resumed, quiet=True)
    finally:
        Trainer.compiled_step = original
    by_step = lambda rs: {r["step"]: r for r in rs if "loss" in r and not r.get("final")}  # noqa: E731
    sa, sb = by_step(records(straight)), by_step(records(resumed))
    assert [sa[s]["block_size"] for s in range(1, 9)] == [1, 1, 16, 16, 4, 4, 1, 1]
    assert [sb[s]["block_size"] for s in (6, 7, 8)] == [4, 1, 1]
    a, _ = params_export.load_params(straight / "params")
    b, _ = params_export.load_params(resumed / "params")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_packed_pretraining_run_with_eval_and_metrics(tmp_path, capsys):
    config = small_config(*BD, *QUIET, "data.packing=first_fit", "train.steps=3", "train.eval_every=2",
                          "train.grad_accum_steps=2", "train.global_batch_size=16")
    summary = loop.run(config, tmp_path)
    out = capsys.readouterr().out
    assert "| block 4" in out and "block-diffusion bound" in out
    rs = records(tmp_path)
    assert [r["block_size"] for r in rs if "loss" in r and not r.get("final")] == [4, 4, 4]
    assert any("eval_loss" in r and not r.get("final") for r in rs)
    assert np.isfinite(summary["eval_loss"]) and summary["masked_accuracy"] >= 0


def test_preflight_compiles_the_costliest_step_of_a_curriculum():
    config = small_config(*BD, "train.block_schedule=16:0.5,2:0.5")
    trainer = Trainer(config, sharding.make_mesh(config.mesh))
    trainer.compile_step()
    assert trainer.has_compiled(2) and not trainer.has_compiled(16)  # two streams: the costlier of the two steps


@pytest.mark.parametrize("shift", [False, True])
def test_a_trained_run_samples_and_scores_through_the_cli(tmp_path, capsys, shift):
    """A run of the two-stream objective (a curriculum 8 -> 4) is a checkpoint `llada-jax sample` and `score` take
    as it is: both read the block size training ended at (4) from its stored config, sample decodes with the block
    sampler (the exact cache's text equals recomputing every column) and score uses the block-diffusion ELBO. The
    same holds for a model trained with model.logit_shift."""
    import math

    from llada_jax.cli import main

    run = tmp_path / "run"
    loop.run(small_config(*BD, *QUIET, "train.steps=2", "train.block_schedule=8:0.5,4:0.5",
                          f"model.logit_shift={shift}"), run, quiet=True)
    capsys.readouterr()
    texts = {}
    for cache in ("exact", "none"):
        assert main(["sample", f"--checkpoint={run}", "--prompt=sort 531=", "--prompt=ab", "--gen-length=6",
                     "--steps=6", f"--cache={cache}"]) == 0
        out, err = capsys.readouterr()
        assert "block-diffusion model: decoding block by block (block 4)" in err
        texts[cache] = [line for line in out.splitlines() if "forward passes" not in line]
    assert texts["exact"] == texts["none"] and len(texts["exact"]) == 4
    (tmp_path / "items.jsonl").write_text(json.dumps({"prompt": "sort 31=", "answer": "13"}) + "\n")
    assert main(["score", f"--checkpoint={run}", f"--input={tmp_path / 'items.jsonl'}", "--mc-num=4",
                 "--batch-size=4"]) == 0
    out, err = capsys.readouterr()
    assert "block-diffusion ELBO with block 4" in err
    assert math.isfinite(json.loads(out.splitlines()[0])["log_likelihood"][0])
