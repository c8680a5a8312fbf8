"""`llada-jax prepare`: every source into shards + manifest, resuming, and every kind of bad input."""
import json
import os

import pytest

from llada_jax import cli
from llada_jax.config import ConfigError
from llada_jax.data import prepare, records, sources
from llada_jax.data.vocab import ByteVocabulary

V = ByteVocabulary()


def write_texts(folder, texts):
    folder.mkdir(exist_ok=True)
    for i, t in enumerate(texts):
        (folder / f"doc{i:03d}.txt").write_bytes(t if isinstance(t, bytes) else t.encode())
    return str(folder / "*.txt")


def read_all(folder, split="train"):
    _, src, _ = records.open_split(str(folder), split, V)
    return [] if src is None else [V.decode(records.decode_record(src[i])) for i in range(len(src))]


def test_text_source_round_trips_every_document(tmp_path):
    texts = [f"document {i} " * (i + 1) for i in range(25)]
    pattern = write_texts(tmp_path / "in", texts)
    m = prepare.prepare(str(tmp_path / "out"), source="text", vocab=V, source_kw={"path": pattern},
                        docs_per_shard=4, eval_fraction=0.1, log=lambda s: None)
    got = read_all(tmp_path / "out") + read_all(tmp_path / "out", "eval")
    assert sorted(got) == sorted(texts)
    assert m["splits"]["eval"]["documents"] >= 1 and m["complete"]
    assert len(m["splits"]["train"]["shards"]) == -(-m["splits"]["train"]["documents"] // 4)
    tok = m["identity"]["tokenizer"]
    assert (tok["name"], tok["size"], tok["mask_id"], tok["eos_id"], tok["pad_id"]) == ("byte", 260, 259, 1, 0)
    assert m["splits"]["train"]["tokens"] + m["splits"]["eval"]["tokens"] == sum(len(t) for t in texts)


def test_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.dumps({"body": f"row {i}"}) for i in range(6)] + [json.dumps({"other": 1}), "not json", ""]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    m = prepare.prepare(str(tmp_path / "j"), source="jsonl", vocab=V,
                        source_kw={"path": str(tmp_path / "a.jsonl"), "field": "body"}, log=lambda s: None)
    assert sorted(read_all(tmp_path / "j")) == [f"row {i}" for i in range(6)]
    assert m["skipped"] == {"lines without a string 'body' field": 1, "lines that are not JSON": 1}

    pq.write_table(pa.table({"text": ["alpha", None, "beta", "  "]}), str(tmp_path / "p.parquet"), row_group_size=2)
    m = prepare.prepare(str(tmp_path / "p"), source="parquet", vocab=V,
                        source_kw={"path": str(tmp_path / "p.parquet"), "field": "text"}, log=lambda s: None)
    assert sorted(read_all(tmp_path / "p")) == ["alpha", "beta"]
    assert m["skipped"] == {"null rows": 1, "empty documents": 1}
    with pytest.raises(ConfigError, match="no column 'body'"):
        prepare.prepare(str(tmp_path / "p2"), source="parquet", vocab=V,
                        source_kw={"path": str(tmp_path / "p.parquet"), "field": "body"}, log=lambda s: None)


def test_pydoc_source_through_the_cli(tmp_path, capsys):
    out = tmp_path / "pydoc"
    assert cli.main(["prepare", "--source=pydoc", f"--output={out}", "--docs-per-shard=20", "--eval-fraction=0.05"]) == 0
    m = records.read_manifest(str(out))
    assert m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"] == len(list(sources.pydoc_documents()))
    assert "train tokens" in capsys.readouterr().out
    # Same command again: already complete, nothing rewritten.
    before = os.path.getmtime(out / "train-00000.array_record")
    assert cli.main(["prepare", "--source=pydoc", f"--output={out}", "--docs-per-shard=20", "--eval-fraction=0.05"]) == 0
    assert os.path.getmtime(out / "train-00000.array_record") == before
    # A different dataset into the same folder is refused.
    assert cli.main(["prepare", "--source=pydoc", f"--output={out}", "--docs-per-shard=10"]) == 2
    assert "already holds a different dataset" in capsys.readouterr().err


def test_rerun_skips_finished_shards(tmp_path):
    pattern = write_texts(tmp_path / "in", [f"text number {i}" for i in range(10)])
    out = str(tmp_path / "out")
    kw = dict(source="text", vocab=V, source_kw={"path": pattern}, docs_per_shard=3, log=lambda s: None)
    prepare.prepare(out, **kw)
    # Simulate an interrupted run: manifest incomplete, shard 1 and the last shard lost.
    m = records.read_manifest(out)
    records.write_json_atomic(os.path.join(out, records.MANIFEST), {**m, "complete": False})
    os.remove(records.stats_path(out, "train", 1))
    os.remove(os.path.join(out, "train-00003.array_record"))
    stamp = os.path.getmtime(os.path.join(out, "train-00000.array_record"))
    m2 = prepare.prepare(out, **kw)
    assert os.path.getmtime(os.path.join(out, "train-00000.array_record")) == stamp
    no_times = lambda splits: {k: {**v, "shards": [{f: x for f, x in sh.items() if f != "mtime_ns"}  # noqa: E731
                                                    for sh in v["shards"]]} for k, v in splits.items()}
    assert no_times(m2["splits"]) == no_times(m["splits"])  # a rewritten shard has a new time, same bytes
    assert sorted(read_all(out)) == sorted(f"text number {i}" for i in range(10))


def test_bad_text_input_is_counted_or_refused(tmp_path):
    pattern = write_texts(tmp_path / "in", ["good one", "", b"\xff\xfe bad bytes", "good two"])
    m = prepare.prepare(str(tmp_path / "o"), source="text", vocab=V, source_kw={"path": pattern}, log=lambda s: None)
    assert m["skipped"] == {"empty files": 1, "non-UTF-8 files": 1}
    assert sorted(read_all(tmp_path / "o")) == ["good one", "good two"]
    with pytest.raises(ConfigError, match=r"doc001.txt is empty; fix the input or drop --strict"):
        prepare.prepare(str(tmp_path / "s"), source="text", vocab=V, source_kw={"path": pattern}, strict=True,
                        log=lambda s: None)
    with pytest.raises(ConfigError, match=r"doc002.txt is not valid UTF-8 \(byte 0\)"):
        prepare.prepare(str(tmp_path / "s2"), source="text", vocab=V, source_kw={"path": pattern.replace("*", "doc002")},
                        strict=True, log=lambda s: None)
    empty = write_texts(tmp_path / "empty", ["", "  \n"])
    with pytest.raises(ConfigError, match=r"no usable training documents \(skipped: 2 empty files\)"):
        prepare.prepare(str(tmp_path / "e"), source="text", vocab=V, source_kw={"path": empty}, log=lambda s: None)
    with pytest.raises(ConfigError, match="matches no files"):
        prepare.prepare(str(tmp_path / "n"), source="text", vocab=V, source_kw={"path": str(tmp_path / "nope/*.txt")},
                        log=lambda s: None)


def test_jsonl_missing_field_everywhere_is_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"content": "x"}\n{"content": "y"}\n')
    with pytest.raises(ConfigError, match="no line of .* has a string field 'text'"):
        prepare.prepare(str(tmp_path / "o"), source="jsonl", vocab=V,
                        source_kw={"path": str(tmp_path / "a.jsonl"), "field": "text"}, log=lambda s: None)


def test_refuses_non_empty_foreign_folder_and_reports_cli_errors(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "something.txt").write_text("x")
    assert cli.main(["prepare", "--source=pydoc", f"--output={tmp_path / 'o'}"]) == 2
    assert "not empty and has no manifest.json" in capsys.readouterr().err
    assert cli.main(["prepare", "--source=jsonl", f"--output={tmp_path / 'j'}"]) == 2
    assert "needs --input" in capsys.readouterr().err


def test_truncated_shard_and_tokenizer_mismatch_are_caught_on_open(tmp_path):
    pattern = write_texts(tmp_path / "in", [f"some text {i}" * 20 for i in range(8)])
    out = str(tmp_path / "out")
    prepare.prepare(out, source="text", vocab=V, source_kw={"path": pattern}, docs_per_shard=4, log=lambda s: None)
    records.open_split(out, "train", V)

    class OtherVocab(ByteVocabulary):
        @property
        def identity(self):
            return {**super().identity, "name": "sentencepiece", "sha256": "0" * 64}

    with pytest.raises(ConfigError, match="different tokenizer than data.tokenizer"):
        records.open_split(out, "train", OtherVocab())
    shard = os.path.join(out, "train-00001.array_record")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"train-00001.array_record has \d+ bytes but the manifest says \d+: it is truncated"):
        records.open_split(out, "train", V)
    m = records.read_manifest(out)
    records.write_json_atomic(os.path.join(out, records.MANIFEST), {**m, "complete": False})
    with pytest.raises(ConfigError, match="only partly prepared"):
        records.open_split(out, "train", V)
