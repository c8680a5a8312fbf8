"""`llada-jax demo`: its pieces, and a shortened run of configs/demo.py that must keep learning."""
import json
import os
import subprocess
import sys

import pytest

from llada_jax.eval import generated_tasks as demo
from llada_jax.data import chat, synthetic_tasks

from helpers import ROOT


def test_task_prompts_are_trained_bare():
    messages = [{"role": "user", "content": "sort 5391="}, {"role": "assistant", "content": "1359"}]
    assert chat.TEMPLATES[demo.TEMPLATE](messages[:1], False) == "sort 5391="


def test_task_file_is_rewritten_only_when_it_changes(tmp_path):
    examples = synthetic_tasks.examples("sorting", 3, seed=0, size=4)
    path = demo.write_sft_jsonl(str(tmp_path / "task" / "train.jsonl"), examples)
    lines = [json.loads(line) for line in open(path)]
    assert lines == [{"prompt": e.prompt, "response": e.answer} for e in examples]
    os.utime(path, (1, 1))  # an unchanged file keeps its time, so its prepared cache stays valid
    demo.write_sft_jsonl(path, examples)
    assert os.path.getmtime(path) == 1
    demo.write_sft_jsonl(path, examples[:2])
    assert os.path.getmtime(path) > 1 and len(open(path).readlines()) == 2


def test_report_counts_exact_matches_and_the_prompt_blind_baseline():
    test = [synthetic_tasks.Example("sort 31=", "13"), synthetic_tasks.Example("sort 22=", "22")]
    train = [synthetic_tasks.Example("sort 21=", "12"), synthetic_tasks.Example("sort 22=", "22"),
             synthetic_tasks.Example("sort 22=", "22")]
    assert demo.prompt_blind_accuracy(train, test) == 0.5  # always answering "22"
    lines = demo.report(test, ["13", " 2 "], shown=2, baseline=0.5)
    assert lines[0].split() == ["sort", "31=13", "ok"] and "wrong (expected 22)" in lines[1]
    assert lines[-1].startswith("held-out accuracy: 1/2 = 50.0% exact match") and "prompt: 50.0%" in lines[-1]


def test_generation_length_is_the_trained_answer_region():
    assert demo.gen_length_for(seq_len=16, longest_prompt=10) == 4
    assert demo.gen_length_for(seq_len=32, longest_prompt=10) == 20
    with pytest.raises(Exception, match="raise train.seq_len"):
        demo.gen_length_for(seq_len=12, longest_prompt=10)


# A measured run of this test's command (one CPU device, XLA's default optimisation, as a user runs it) ended
# at eval loss 0.081 and 37/40 = 92.5% held-out accuracy, against a unigram entropy of 2.77 nats and 0% for
# answering without reading the prompt.
EVAL_LOSS_AFTER_150_STEPS = 0.4
ACCURACY_AFTER_150_STEPS = 50.0


@pytest.mark.slow
def test_shortened_demo_learns_to_sort(tmp_path):
    """configs/demo.py for 150 of its 600 steps on 4,000 problems must already sort most held-out ones.

    Run as a user runs it: the `llada-jax` entry point in a fresh process with one CPU device and XLA's default
    optimisation (training steps, not compiling, dominate this run; in-process under the tests' 8-device,
    level-0 settings it took a third longer)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = ["demo", f"--workdir={tmp_path}", "--train-examples=4000", "--test-examples=40", "--show=2",
            "--config.train.steps=150", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    final = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and final["eval_loss"] < EVAL_LOSS_AFTER_150_STEPS, final
    accuracy = float(out.split("held-out accuracy: ")[1].split("=")[1].split("%")[0])
    assert accuracy >= ACCURACY_AFTER_150_STEPS, out[-2000:]


# A measured run of this test's command (one CPU device, a machine loaded by other jobs: 3m31s of wall time, 1m03s
# of user CPU) ended at eval loss 0.049 (the block-diffusion bound) and 40/40 held-out problems, decoded block by
# block by the earlier recompute decoder; on the merged branch (main's fused head loss, answered by the block
# sampler with its exact cache, as `llada-jax sample` does): 1m18s of wall time, eval loss 0.067, 40/40.
@pytest.mark.slow
def test_shortened_block_diffusion_demo_learns_to_sort(tmp_path):
    """`llada-jax demo --objective=block_diffusion`: the same 150-step run trained with blocks of 4 (two streams)
    and answered block by block must sort most held-out problems too."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = ["demo", "--objective=block_diffusion", f"--workdir={tmp_path}", "--train-examples=4000",
            "--test-examples=40", "--show=2", "--config.train.steps=150", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| block 4" in out + done.stderr and "in blocks of 4" in out + done.stderr
    final = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and final["eval_loss"] < EVAL_LOSS_AFTER_150_STEPS, final
    accuracy = float(out.split("held-out accuracy: ")[1].split("=")[1].split("%")[0])
    assert accuracy >= ACCURACY_AFTER_150_STEPS, out[-2000:]


@pytest.mark.parametrize("objective", ["sft", "block_diffusion"])
def test_long_answer_demo_config_fits_its_task_in_whole_blocks(objective):
    """configs/demo_long.py: a 32-letter repetition problem and its 256-token answer fill one row of whole blocks,
    so the full-sequence and block-diffusion models it trains decode gen 256 in blocks of 32."""
    from llada_jax.config import load_config, validate
    from llada_jax.data.vocab import ByteVocabulary

    config = load_config(os.path.join(ROOT, "configs", "demo_long.py"), [f"train.objective={objective}"])
    validate(config)
    t = config.train
    train, _ = synthetic_tasks.train_test_split("repetition", 50, 10, seed=t.seed, size=32)
    prompt = max(len(e.prompt) for e in train)
    answer = synthetic_tasks.answer_width("repetition", 32)
    tokens, _ = synthetic_tasks.encode(train, ByteVocabulary(), prompt, answer)
    assert tokens.shape[1] == prompt + 256 <= t.seq_len == config.model.max_seq_len
    assert t.seq_len % t.block_size == 0 and t.block_size == 32
    assert demo.gen_length_for(t.seq_len, prompt, block=t.block_size) >= 256
