"""SFT data: conversations -> chat template -> tokens + prompt_mask, EOS padding, over-long policy, and the
Hugging Face tokenizer path with the official LLaDA chat format."""
import json

import numpy as np
import pytest

from llada_jax.config import ConfigError
from llada_jax.data import chat, pipeline, prepare, records, sft
from llada_jax.data.vocab import ByteVocabulary, HFVocabulary, get_vocabulary

from helpers import small_config

V = ByteVocabulary()
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def sft_config(tmp_path, data, *extra):
    return small_config("train.objective=sft", "data.source=sft_jsonl", f"data.path={data}",
                        f"data.cache_dir={tmp_path / 'cache'}", "data.eval_fraction=0", *extra)


def test_rows_mask_the_prompt_and_pad_the_response_with_eos(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "hi", "response": "yo"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])
    config = sft_config(tmp_path, data, "train.global_batch_size=2", "data.shuffle=False", "train.seq_len=22")
    batches, _, info = pipeline.build(config, 0, 1)
    b = next(batches)
    assert set(b) == {"tokens", "prompt_mask", "segment_ids"} and b["tokens"].shape == (2, 22) and b["prompt_mask"].dtype == bool
    first = b["tokens"][0]
    n_prompt = len("User: hi\n\nAssistant: ")
    assert b["prompt_mask"][0].sum() == n_prompt == 21
    assert V.decode(first[:n_prompt]) == "User: hi\n\nAssistant: "
    assert V.decode(first[n_prompt:]) == "y"  # truncated: 21 + 2 + 1 EOS > 22
    # The multi-turn prompt (earlier turns + template) is longer than 22 tokens: dropped, whatever the policy.
    assert info["sft_truncated"] == 1 and info["sft_dropped"] == 1
    assert np.array_equal(b["tokens"][1], first)  # the only example left, again in the next epoch


def test_padding_and_overlong_counts_with_room(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "ok"}, {"prompt": "x" * 40, "response": "r"},
                                              {"prompt": "w", "response": "z" * 40}, {"nothing": 1}])
    config = sft_config(tmp_path, data, "train.seq_len=32", "model.max_seq_len=64", "train.global_batch_size=1",
                        "data.shuffle=False", "data.sft_overlong=drop")
    batches, _, info = pipeline.build(config, 0, 1)
    assert info["sft_dropped"] == 2 and info["sft_truncated"] == 0 and info["skipped"] == {
        "lines without prompt/response or messages": 1}
    rows = [next(batches) for _ in range(3)]
    assert all(np.array_equal(r["tokens"], rows[0]["tokens"]) for r in rows)  # only the short one is kept
    t, m = rows[0]["tokens"][0], rows[0]["prompt_mask"][0]
    n_prompt = len("User: q\n\nAssistant: ")
    assert m.sum() == n_prompt and not m[n_prompt:].any()
    assert V.decode(t[n_prompt:n_prompt + 2]) == "ok" and np.all(t[n_prompt + 2:] == V.eos_id)
    # the example is prompt + response + one EOS; the train step pads it to its batch's longest example
    np.testing.assert_array_equal(rows[0]["segment_ids"][0], np.arange(32) < n_prompt + 3)
    counts = sft.overlong_counts(np.array([[5, 10], [40, 41], [2, 42]]), 32, "truncate")
    assert counts == {"truncated": 1, "dropped": 1}


def test_sft_data_needs_the_sft_objective_and_vice_versa(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "ok"}])
    with pytest.raises(ConfigError, match="set --config.train.objective=sft"):
        pipeline.build(sft_config(tmp_path, data, "train.objective=mdm"), 0, 1)
    with pytest.raises(ConfigError, match="needs conversations"):
        pipeline.build(small_config("train.objective=sft", f"data.cache_dir={tmp_path / 'c2'}"), 0, 1)
    bad = write_jsonl(tmp_path / "b.jsonl", [{"question": "q"}, "[1, 2]"])
    with pytest.raises(ConfigError, match="no line of .* is a conversation"):
        pipeline.build(sft_config(tmp_path, bad), 0, 1)


def make_hf_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the capital of France is Paris."] * 20, trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return str(folder)


def test_hf_tokenizer_and_the_llada_chat_template(tmp_path):
    path = make_hf_tokenizer(tmp_path / "tok")
    vocab = HFVocabulary(path)
    assert (vocab.mask_id, vocab.eos_id, vocab.pad_id, vocab.bos_id) == (2, 1, 1, 0)
    assert vocab.decode(vocab.encode("hello Paris")) == "hello Paris"
    assert chat.resolve("auto", vocab) == "llada" and chat.resolve("auto", V) == "plain"
    prompt, response = chat.encode_example({"messages": [{"role": "user", "content": "capital of France?"},
                                                         {"role": "assistant", "content": "Paris."}]}, vocab, "llada")
    expected = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\ncapital of France?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt == vocab.encode(expected) and prompt[:2] == [0, 3] and vocab.decode(response) == "Paris."
    with pytest.raises(ConfigError, match="needs the official LLaDA tokenizer"):
        chat.resolve("llada", V)

    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "capital of France?", "response": "Paris."}])
    config = sft_config(tmp_path, data, "data.tokenizer=hf", f"data.tokenizer_path={path}", "train.seq_len=64",
                        "train.global_batch_size=1", "model.mask_token_id=2", "model.eos_token_id=1",
                        "model.pad_token_id=1")
    b = next(pipeline.build(config, 0, 1)[0])
    assert list(b["tokens"][0][: len(prompt)]) == prompt and b["prompt_mask"][0].sum() == len(prompt)
    assert b["tokens"][0][-1] == vocab.eos_id


def test_vocabulary_checks_against_the_model(tmp_path):
    with pytest.raises(ConfigError, match="needs 260 ids but model.vocab_size=200; raise --config.model.vocab_size"):
        get_vocabulary(small_config("model.vocab_size=200", "model.mask_token_id=100"))
    with pytest.raises(ConfigError, match="set --config.model.mask_token_id=259"):
        get_vocabulary(small_config("model.mask_token_id=100"))
    path = make_hf_tokenizer(tmp_path / "tok")
    with pytest.raises(ConfigError, match="model.mask_token_id=259 but the hf vocabulary uses 2"):
        get_vocabulary(small_config("data.tokenizer=hf", f"data.tokenizer_path={path}"))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        HFVocabulary(str(tmp_path))
    with pytest.raises(ConfigError, match="is unknown"):
        get_vocabulary(small_config("data.tokenizer=gpt9"))
