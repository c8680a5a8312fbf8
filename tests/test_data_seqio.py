"""seqio vocabularies and Tasks (these import TensorFlow, so they live together), and the byte path's
promise not to import it."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llada_jax import cli
from llada_jax.config import ConfigError
from llada_jax.data import pipeline, records, sources
from llada_jax.data.vocab import ByteVocabulary, SentencePieceVocabulary

from helpers import ROOT, small_config

TEXT = ["The quick brown fox jumps over the lazy dog.", "Masked diffusion models denoise tokens in parallel.",
        "A vocabulary maps text to ids and back again."] * 30


def test_byte_ids_equal_seqio_byte_vocabulary():
    import seqio

    ours, theirs = ByteVocabulary(), seqio.ByteVocabulary()
    text = "héllo, wörld ✓"
    assert ours.encode(text) == list(theirs.encode(text))
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (theirs.pad_id, theirs.eos_id, theirs.unk_id)
    assert ours.mask_id == theirs.vocab_size == 259


def test_byte_path_does_not_import_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from helpers import small_config
        from llada_jax.data import pipeline
        b, e, i = pipeline.build(small_config("data.cache_dir={tmp_path}"), 0, 1)
        next(b)
        print("TF" if "tensorflow" in sys.modules or "seqio" in sys.modules else "CLEAN")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.strip().endswith("CLEAN"), out.stderr[-2000:]


def test_train_tokenizer_then_prepare_and_train_with_sentencepiece(tmp_path):
    (tmp_path / "in").mkdir()
    for i, t in enumerate(TEXT):
        (tmp_path / "in" / f"{i:03d}.txt").write_text(t)
    model = tmp_path / "spm.model"
    out = tmp_path / "out"
    assert cli.main(["prepare", "--source=text", f"--input={tmp_path}/in/*.txt", "--train-tokenizer",
                     f"--tokenizer-path={model}", "--vocab-size=300", f"--output={out}", "--eval-fraction=0.1"]) == 0
    vocab = SentencePieceVocabulary(str(model))
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2) and vocab.mask_id == vocab.size - 1
    assert vocab.decode(vocab.encode(TEXT[0])) == TEXT[0]
    manifest, src, _ = records.open_split(str(out), "train", vocab)
    assert manifest["identity"]["tokenizer"]["name"] == "sentencepiece"
    stored = sorted(vocab.decode(records.decode_record(src[i])) for i in range(len(src)))
    assert set(stored) <= set(TEXT) and len(src) + manifest["splits"]["eval"]["documents"] == len(TEXT)
    config = small_config("data.source=prepared", f"data.path={out}", "data.tokenizer=sentencepiece",
                          f"data.tokenizer_path={model}", f"model.vocab_size={vocab.size}",
                          f"model.mask_token_id={vocab.mask_id}")
    batch = next(pipeline.build(config, 0, 1)[0])
    assert batch["tokens"].max() < vocab.mask_id
    with pytest.raises(ConfigError, match=f"needs {vocab.size} ids but model.vocab_size=100"):
        pipeline.build(small_config("data.tokenizer=sentencepiece", f"data.tokenizer_path={model}",
                                    "model.vocab_size=100", f"model.mask_token_id={vocab.mask_id}"), 0, 1)


@pytest.mark.slow
def test_seqio_task_registered_in_an_imported_module(tmp_path, monkeypatch):
    (tmp_path / "my_llada_tasks.py").write_text(textwrap.dedent(f"""
        import seqio, tensorflow as tf
        TEXT = {TEXT[:6]!r}
        seqio.TaskRegistry.add(
            "llada_test_task",
            source=seqio.FunctionDataSource(
                lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({{"targets": TEXT}}),
                splits=["train"]),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
            output_features={{"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)}})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert cli.main(["prepare", "--source=seqio", "--seqio-task=llada_test_task", "--import-module=my_llada_tasks",
                     f"--output={out}", "--eval-fraction=0"]) == 0
    _, src, info = records.open_split(str(out), "train", ByteVocabulary())
    got = [ByteVocabulary().decode(records.decode_record(src[i])) for i in range(len(src))]
    assert got == TEXT[:6]  # stored order; the trailing EOS the task appends is dropped (the pipeline adds one)
    assert cli.main(["prepare", "--source=seqio", "--seqio-task=no_such_task", f"--output={tmp_path / 'o2'}"]) == 2
    with pytest.raises(ConfigError, match="cannot import module 'missing_mod_xyz'"):
        sources.import_modules("missing_mod_xyz")
