"""Grain training pipeline: packing loses nothing, seeds decide the order, processes split the data,
resumed iterators continue exactly, mixtures follow their weights, and build() serves the trainer."""
import collections
import json

import numpy as np
import pytest

from llada_jax.config import ConfigError
from llada_jax.data import pipeline, prepare, records
from llada_jax.data.vocab import ByteVocabulary

from helpers import small_config

V = ByteVocabulary()


def make_dataset(tmp_path, name, n_docs=40, seed=0, eval_fraction=0.0):
    """Documents of varied length (some longer than the 16-token rows) made of distinctive ids."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / f"{name}-in"
    folder.mkdir()
    for i in range(n_docs):
        text = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(rng.integers(1, 40))))
        (folder / f"{i:03d}.txt").write_text(text)
    out = str(tmp_path / name)
    prepare.prepare(out, source="text", vocab=V, source_kw={"path": str(folder / "*.txt")}, docs_per_shard=7,
                    eval_fraction=eval_fraction, log=lambda s: None)
    return out


def all_doc_tokens(out):
    _, src, _ = records.open_split(out, "train", V)
    return collections.Counter(np.concatenate([np.append(records.decode_record(src[i]), V.eos_id)
                                               for i in range(len(src))]).tolist())


def epoch_rows(out, packing="concat", seed=0, process_index=0, process_count=1):
    _, src, _ = records.open_split(out, "train", V)
    ds = pipeline.rows(src, "pretrain", seq_len=16, eos_id=V.eos_id, pad_id=V.pad_id, seed=seed,
                       packing_mode=packing, process_index=process_index, process_count=process_count, num_epochs=1)
    return list(ds)


@pytest.mark.parametrize("packing", ["concat", "first_fit"])
def test_one_epoch_packs_every_token_exactly_once(tmp_path, packing):
    out = make_dataset(tmp_path, "d")
    rows = epoch_rows(out, packing)
    assert all(r["tokens"].shape == (16,) for r in rows)
    real = np.concatenate([r["tokens"][r["segment_ids"] > 0] if "segment_ids" in r else r["tokens"] for r in rows])
    real = real[real != V.pad_id]  # only the epoch's last concat row is padded
    assert collections.Counter(real.tolist()) == all_doc_tokens(out)
    if packing == "first_fit":
        for r in rows:  # segments are contiguous runs numbered from 1, padding 0 at the end
            seg = r["segment_ids"]
            assert seg[0] == 1 and np.all(np.diff(seg[seg > 0]) >= 0) and np.all(r["tokens"][seg == 0] == V.pad_id)


def test_order_is_a_function_of_the_seed(tmp_path):
    out = make_dataset(tmp_path, "d")
    a, b, c = (np.stack([r["tokens"] for r in epoch_rows(out, seed=s)]) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("packing", ["concat", "first_fit"])
def test_two_processes_read_disjoint_halves_of_the_whole(tmp_path, packing):
    out = make_dataset(tmp_path, "d")
    tokens = []
    for pi in range(2):
        rows = epoch_rows(out, packing, process_index=pi, process_count=2)
        t = np.concatenate([r["tokens"][r["segment_ids"] > 0] if "segment_ids" in r else r["tokens"] for r in rows])
        tokens.append(collections.Counter(t[t != V.pad_id].tolist()))
    assert tokens[0] + tokens[1] == all_doc_tokens(out)
    assert tokens[0] != tokens[1]


def config_for(out, *extra):
    return small_config("data.source=prepared", f"data.path={out}", *extra)


@pytest.mark.parametrize("extra", [(), ("data.packing=first_fit",), ("data.shuffle=False",)])
def test_state_round_trip_resumes_with_identical_batches(tmp_path, extra):
    out = make_dataset(tmp_path, "d", n_docs=12)  # several epochs within the test
    batches, _, _ = pipeline.build(config_for(out, *extra), 0, 1)
    for _ in range(5):
        next(batches)
    state = json.loads(json.dumps(batches.get_state()))  # what a checkpoint stores
    expected = [next(batches) for _ in range(6)]
    fresh, _, _ = pipeline.build(config_for(out, *extra), 0, 1)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # A state without this process's grain entry (only process 0's was saved) replays to the same place.
    other, _, _ = pipeline.build(config_for(out, *extra), 0, 1)
    other.set_state({"batches": state["batches"], "process_count": 1, "grain": {}})
    assert np.array_equal(next(other)["tokens"], expected[0]["tokens"])


def test_build_batches_processes_and_eval(tmp_path):
    out = make_dataset(tmp_path, "d", n_docs=60, eval_fraction=0.3)
    config = config_for(out, "train.eval_batches=2")
    parts = [pipeline.build(config, pi, 2) for pi in range(2)]
    b0, b1 = (next(p[0]) for p in parts)
    assert b0["tokens"].shape == (4, 16) and b0["tokens"].dtype == np.int32
    # shard_by="batch": the two processes' rows are exactly the single-process global batch, and their
    # iterator states agree, so one saved state restores both.
    single = next(pipeline.build(config, 0, 1)[0])["tokens"]
    assert np.array_equal(np.concatenate([b0["tokens"], b1["tokens"]]), single)
    assert parts[0][0].get_state() == parts[1][0].get_state()
    # shard_by="document": each process packs its own documents into its rows.
    doc_parts = [next(pipeline.build(config_for(out, "data.shard_by=document"), pi, 2)[0])["tokens"] for pi in range(2)]
    assert doc_parts[0].shape == (4, 16) and not np.array_equal(np.concatenate(doc_parts), single)
    ev0, ev1 = parts[0][1], parts[1][1]
    assert len(ev0) == 2 and ev0[0]["tokens"].shape == (4, 16)
    _, whole, info = pipeline.build(config, 0, 1)
    assert np.array_equal(np.concatenate([ev0[0]["tokens"], ev1[0]["tokens"]]), whole[0]["tokens"])
    assert info["eval_documents"] > 0 and 0 < info["unigram_entropy"] < np.log(27)
    with pytest.raises(ConfigError, match="does not split over 3 processes"):
        pipeline.build(config, 0, 3)


def test_mixture_follows_weights_deterministically(tmp_path):
    a = make_dataset(tmp_path, "a", seed=1)
    b_folder = tmp_path / "b-in"
    b_folder.mkdir()
    for i in range(30):
        (b_folder / f"{i}.txt").write_text("0123456789" * 3)  # digits only: rows from b are recognizable
    b = str(tmp_path / "b")
    prepare.prepare(b, source="text", vocab=V, source_kw={"path": str(b_folder / "*.txt")}, log=lambda s: None)
    config = small_config(f"data.mixture={a}:3,{b}:1", "train.global_batch_size=40")
    batches, _, info = pipeline.build(config, 0, 1)
    rows = np.concatenate([next(batches)["tokens"] for _ in range(5)])
    from_b = np.mean([np.all((r >= ord("0") + 3) & (r <= ord("9") + 3) | (r == V.eos_id)) for r in rows])
    assert 0.15 < from_b < 0.35
    again = pipeline.build(config, 0, 1)[0]
    assert np.array_equal(np.concatenate([next(again)["tokens"] for _ in range(5)]), rows)
    assert info["datasets"] == [a, b]


def test_tiny_config_prepares_pydoc_on_first_use(tmp_path):
    config = small_config(f"data.cache_dir={tmp_path}")
    batches, evals, info = pipeline.build(config, 0, 1)
    assert len(list(tmp_path.iterdir())) == 1 and info["train_tokens"] > 300_000
    assert next(batches)["tokens"].shape == (8, 16) and len(evals) == config.train.eval_batches
    assert 2.0 < info["unigram_entropy"] < 5.0
    pipeline.build(config, 0, 1)  # second run reuses the folder
    assert len(list(tmp_path.iterdir())) == 1


def test_config_tokenizer_must_match_the_prepared_data(tmp_path):
    out = make_dataset(tmp_path, "d")
    m = records.read_manifest(out)
    m["identity"]["tokenizer"]["sha256"] = "f" * 64
    records.write_json_atomic(f"{out}/manifest.json", m)
    with pytest.raises(ConfigError, match="different tokenizer"):
        pipeline.build(config_for(out), 0, 1)
    with pytest.raises(ConfigError, match="data.packing='zigzag' is unknown"):
        pipeline.build(config_for(out, "data.packing=zigzag"), 0, 1)
