"""`llada-jax eval` through lm-evaluation-harness on local tasks (no download): one harness run of a tiny random
checkpoint on a multiple-choice, a generation and a perplexity task, checked against `llada-jax score`,
`llada-jax sample` and the per-request likelihood; plus the settings, presets and one-line errors."""
import json

import jax
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from llada_jax.checkpoints import locate, params_export as exports
from llada_jax.inference import likelihood
from llada_jax.cli import main  # noqa: E402
from llada_jax.data.vocab import get_vocabulary  # noqa: E402
from llada_jax.eval import requests as req_lib  # noqa: E402
from llada_jax.eval.presets import PRESETS  # noqa: E402
from llada_jax.eval.progress import Progress  # noqa: E402

from helpers import ROOT, params_export, xla_flags  # noqa: E402

MC_DOCS = [  # choices of one byte are scored exactly; longer ones by Monte Carlo
    {"question": "Sky:", "choices": ["b", "g", "r"], "label": 0},
    {"question": "2+2=", "choices": ["4", "5"], "label": 1},
    {"question": "Cats", "choices": [" meow", " woof!"], "label": 0},
]
GEN_DOCS = [{"prompt": "Q: hi\nA:", "answer": "hi"}, {"prompt": "Q: count to three\nA:", "answer": "1 2 3"}]
ROLL_TEXT = "the quick brown fox"
MC_NUM, MC_BATCH, GEN = 32, 4, dict(gen_length=16, steps=16, block_length=8)
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
{extra}"""
MC_EXTRA = """target_delimiter: ""
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GEN_EXTRA = """doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["Q:", "\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
ROLL_EXTRA = """doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""


def write_tasks(folder):
    folder.mkdir()
    for name, kind, docs, extra in [("local_mc", "multiple_choice", MC_DOCS, MC_EXTRA),
                                    ("local_gen", "generate_until", GEN_DOCS, GEN_EXTRA),
                                    ("local_roll", "loglikelihood_rolling", [{"text": ROLL_TEXT}], ROLL_EXTRA)]:
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, output_type=kind, extra=extra))
    return str(folder)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """Hugging Face caches in a private folder and no network for datasets or the hub."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
    patch.setenv("HF_DATASETS_OFFLINE", "1")
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield
    patch.undo()


def eval_argv(export, tasks, output, task_names="local_mc,local_gen,local_roll"):
    return ["eval", f"--checkpoint={export}", f"--tasks={task_names}", f"--include-path={tasks}",
            f"--mc-num={MC_NUM}", f"--mc-batch-size={MC_BATCH}", "--rows-per-pass=16", "--gen-batch-size=8",
            *[f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()], f"--output={output}", "--log-samples"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, offline_env):
    """One `llada-jax eval` run of the three local tasks; returns (export, tasks dir, results JSON)."""
    root = tmp_path_factory.mktemp("eval")
    export, tasks = params_export(root), write_tasks(root / "tasks")
    output = root / "results.json"
    assert main(eval_argv(export, tasks, output)) == 0
    return export, tasks, json.loads(output.read_text())


def mc_log_likelihoods(results):
    """doc index -> [log-likelihood per choice] from the harness's logged samples."""
    out = {}
    for sample in results["samples"]["local_mc"]:
        out[sample["doc_id"]] = [float(r[0][0]) for r in sample["resps"]]
    return out


def test_multiple_choice_matches_the_per_request_likelihood_and_the_score_cli(run, tmp_path, capsys):
    export, _, results = run
    got = mc_log_likelihoods(results)
    config = locate.read_config(locate.resolve(export))
    vocab = get_vocabulary(config)
    graphdef, params, _ = exports.load_model(export)
    for n, doc in enumerate(MC_DOCS):  # same masks: log_likelihood with the harness's per-context key
        context = doc["question"]
        key = jax.random.wrap_key_data(req_lib.request_keys([context], 0)[0])
        for c, choice in enumerate(doc["choices"]):
            prompt, answer = vocab.encode(context), vocab.encode(choice)
            want, _ = likelihood.log_likelihood(graphdef, params, prompt, answer, key, mask_id=259, mc_num=MC_NUM,
                                                batch_size=MC_BATCH)
            assert got[n][c] == pytest.approx(want, abs=1e-4), (n, c)
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"prompt": d["question"], "choices": d["choices"], "label": d["label"]})
                            + "\n" for d in MC_DOCS))
    assert main(["score", f"--checkpoint={export}", f"--input={data}", f"--mc-num={MC_NUM}",
                 f"--batch-size={MC_BATCH}"]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()][:len(MC_DOCS)]
    for n, record in enumerate(scored):  # other random masks: one-byte choices exact, the rest within MC error
        for c, (value, err) in enumerate(zip(record["log_likelihood"], record["stderr"])):
            tolerance = 1e-3 if len(MC_DOCS[n]["choices"][c]) == 1 else 6 * err + 1e-3
            assert abs(got[n][c] - value) <= tolerance, (n, c, got[n][c], value, err)
    accuracy = np.mean([int(np.argmax(got[n])) == d["label"] for n, d in enumerate(MC_DOCS)])
    assert results["results"]["local_mc"]["acc,none"] == pytest.approx(accuracy)


def test_generation_matches_the_sample_cli_cut_at_the_stop_strings(run, capsys):
    export, _, results = run
    got = {s["doc_id"]: s["resps"][0][0] for s in results["samples"]["local_gen"]}
    argv = ["sample", f"--checkpoint={export}", *[f"--prompt={d['prompt']}" for d in GEN_DOCS],
            *[f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()]]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for n, doc in enumerate(GEN_DOCS):  # each sample is printed as "=== PROMPT\nTEXT\n"; the stops include "\n"
        generated = text.split(f"=== {doc['prompt']}\n", 1)[1]
        assert got[n] == req_lib.cut_at_stops(generated, ["Q:", "\n"]), (n, got[n], generated)
    exact = np.mean([got[n] == d["answer"] for n, d in enumerate(GEN_DOCS)])
    assert results["results"]["local_gen"]["exact_match,none"] == pytest.approx(exact)


def test_rolling_loglikelihood_is_the_elbo_of_the_whole_text(run):
    export, _, results = run
    (sample,) = results["samples"]["local_roll"]
    graphdef, params, config = exports.load_model(export)
    tokens = get_vocabulary(config).encode(ROLL_TEXT)
    key = jax.random.wrap_key_data(req_lib.request_keys([f"0:0:{ROLL_TEXT}"], 0)[0])
    want, _ = likelihood.log_likelihood(graphdef, params, [], tokens, key, mask_id=259, mc_num=MC_NUM,
                                        batch_size=MC_BATCH)
    assert float(sample["resps"][0][0]) == pytest.approx(want, abs=1e-4)
    words = len(ROLL_TEXT.split())
    assert results["results"]["local_roll"]["word_perplexity,none"] == pytest.approx(np.exp(-want / words),
                                                                                     rel=1e-4)
    used = results["llada_jax"]["local_roll"]
    assert used["mc_num"] == MC_NUM and used["rows_per_pass"] == 16


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_batched_scoring_equals_per_request_scoring_on_the_mesh(cfg_scale):
    """Same keys, same masks: the batched, sharded path (distinct maskings once, logits over answer spans only,
    guidance included) reproduces log_likelihood request by request (the official estimator here; the harness
    run above checks the unbiased one)."""
    from llada_jax import sharding
    from test_likelihood import GRAPHDEF, MASK, PARAMS

    pairs = [([5, 9], [2, 30, 11]), ([1, 2, 3, 4], [7]), ([3] * 20, [4, 5, 6, 7, 8]), ([5, 9], [2, 30])]
    keys = [jax.random.key(10 + i) for i in range(len(pairs))]
    key_data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    want = [likelihood.log_likelihood(GRAPHDEF, PARAMS, p, a, k, mask_id=MASK, mc_num=16, batch_size=4,
                                      estimator="official", cfg_scale=cfg_scale) for (p, a), k in zip(pairs, keys)]
    got = likelihood.batched_log_likelihoods(GRAPHDEF, PARAMS, pairs, key_data, mask_id=MASK, mc_num=16,
                                             batch_size=4, estimator="official", rows_per_pass=8, mesh=mesh,
                                             cfg_scale=cfg_scale)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert got[1][1] == 0.0  # one answer token: exact, one row


@pytest.mark.parametrize("batch, answer_len", [(2, 3), (6, 3), (8, 5), (4, 6), (16, 7)])
def test_official_estimator_rounds_half_to_even_and_is_biased_only_at_ties(batch, answer_len):
    table = np.array([np.asarray(likelihood.stratified_counts(k, batch, answer_len, "official"))
                      for k in range(1, answer_len + 1)])
    reference = np.array([((np.round(k + np.arange(batch) * answer_len / batch) - 1) % answer_len) + 1
                          for k in range(1, answer_len + 1)])  # numpy rounds half to even, as torch.round
    np.testing.assert_array_equal(table, reference)
    ties = np.isclose((np.arange(batch) * answer_len / batch) % 1, 0.5)
    uniform = [sorted(table[:, j]) == list(range(1, answer_len + 1)) for j in range(batch)]
    assert uniform == list(~ties)  # exactly the samples at a tie lose their uniform l


def test_official_estimator_expectation_differs_from_the_exact_bound():
    """By enumeration on a tiny model: L=3, B=2 has a tie, so the official mean misses sum_l g(l) / L."""
    from test_likelihood import ANSWER, PROMPT, masked_ce_by_count

    g = masked_ce_by_count(PROMPT, ANSWER)
    exact = sum(g.values()) / len(ANSWER)
    expectation = {est: np.mean([[g[int(n)] for n in np.asarray(likelihood.stratified_counts(k, 2, 3, est))]
                                 for k in (1, 2, 3)]) for est in likelihood.ESTIMATORS}
    assert expectation["unbiased"] == pytest.approx(exact, rel=1e-12)
    assert abs(expectation["official"] - exact) > 1e-3


MULTIHOST_DRIVER = """
import sys
from llada_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_on_loopback_equal_the_one_process_run(run, tmp_path):
    """Two JAX processes with 4 CPU devices each (one 8-device mesh, as the one-process run has): each feeds
    its share of every pass, only process 0 writes, and the numbers are those of the one-process run."""
    import os
    import subprocess
    import sys

    from test_multiprocess import free_port

    export, tasks, single = run
    driver, output = tmp_path / "driver.py", tmp_path / "two.json"
    driver.write_text(MULTIHOST_DRIVER)
    port, procs = free_port(), []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS="cpu",
                   PYTHONPATH=ROOT)
        argv = eval_argv(export, tasks, output, "local_mc,local_gen") + [
            f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}"]
        procs.append(subprocess.Popen([sys.executable, str(driver), *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "results written" in outs[0][0] and "results written" not in outs[1][0]  # process 0 reports
    double = json.loads(output.read_text())
    def flat(results):
        by_doc = mc_log_likelihoods(results)
        return [value for doc in sorted(by_doc) for value in by_doc[doc]]

    def texts(results):
        return {s["doc_id"]: s["resps"] for s in results["samples"]["local_gen"]}

    assert flat(double) == pytest.approx(flat(single), abs=1e-4)
    assert texts(double) == texts(single)
    for task in ("local_mc", "local_gen"):
        assert double["results"][task] == single["results"][task]


# --- pieces ----------------------------------------------------------------------------------------------------

class ToyVocab:
    """Whitespace-merging tokenizer: a space and the next character form one token."""

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            width = 2 if text[i] == " " and i + 1 < len(text) else 1
            out.append(text[i:i + width])
            i += width
        return out


def test_encode_pair_moves_trailing_spaces_and_scores_the_tail_of_the_whole_text():
    assert req_lib.encode_pair(ToyVocab(), "Answer: ", "yes") == (list("Answer:"), [" y", "e", "s"])
    assert req_lib.encode_pair(ToyVocab(), "ab", " c") == (["a", "b"], [" c"])


def test_cut_at_stops_and_rolling_windows():
    assert req_lib.cut_at_stops("abc\nQ: d", ["Q:", "\n"]) == "abc"
    assert req_lib.cut_at_stops("abc", ["", "x"]) == "abc"
    assert req_lib.rolling_windows(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert req_lib.rolling_windows([], 4) == []


def test_progress_reports_requests_per_second_and_eta():
    now = [0.0]
    lines = []

    class Stream:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    progress = Progress("ll", total_units=100, requests=10, every_s=5, stream=Stream(), clock=lambda: now[0])
    now[0] = 2.0
    progress.update(20)  # too soon: nothing printed
    now[0] = 10.0
    progress.update(50)  # 5 requests in 10 s: 0.5 requests/s, 5 left: 10 s
    assert "".join(lines).strip() == "[ll] 5/10 requests, 0.50 requests/s, elapsed 10s, ETA 10s"


def test_presets_hold_the_official_settings_and_the_readme_lists_them():
    base = PRESETS["llada_base"]
    assert base["mmlu"] == (5, {"mc_num": 1, "mc_batch_size": 1, "estimator": "official", "check_greedy": False,
                                "cfg_scale": 0.0})
    assert {t: s["cfg_scale"] for t, (_, s) in base.items() if "cfg_scale" in s} == {
        "mmlu": 0.0, "arc_challenge": 0.5, "hellaswag": 0.5, "winogrande": 0.0, "piqa": 0.5,
        "gpqa_main_n_shot": 0.5, "truthfulqa_mc2": 2.0}
    assert all(s["gen_length"] == s["steps"] == s["block_length"] == 1024
               for t, (_, s) in base.items() if t in ("gsm8k", "bbh", "minerva_math", "humaneval", "mbpp"))
    readme = open(f"{ROOT}/README.md", encoding="utf-8").read()
    for task, (shots, settings) in base.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| {task} ")), None)
        assert row is not None, task
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == ("default" if shots is None else str(shots)), task
        assert cells[2] == str(settings.get("mc_num", "-")) and cells[3] == str(settings.get("cfg_scale", "-"))


@pytest.mark.parametrize("extra, fragment", [
    (["--tasks=local_mc", "--preset=llada_base"], "task local_mc has no setting in --preset=llada_base"),
    (["--tasks=local_mc", "--preset=bogus"], "--preset=bogus is unknown"),
    (["--tasks=local_mc", "--mc-num=0"], "mc_num=0 must be positive"),
    (["--tasks=local_mc", "--gen-length=10", "--block-length=4"], "gen_length=10 is not a multiple"),
    (["--tasks=local_mc", "--config.model.d_model=8"], "does not apply here"),
])
def test_eval_cli_bad_input_is_one_line(run, capsys, extra, fragment):
    export, tasks, _ = run
    assert main(["eval", f"--checkpoint={export}", f"--include-path={tasks}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err


def test_eval_cli_rejects_a_missing_include_path(tmp_path, capsys):
    assert main(["eval", f"--checkpoint={tmp_path}", "--tasks=x", f"--include-path={tmp_path / 'no'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def greedy_reference(graphdef, params, prompt, length, mask_id):
    """The official suffix_greedy_prediction in NumPy: reveal the most confident masked token, one per pass
    (the mask id itself excluded, as the sampler does)."""
    from llada_jax.models import registry as M

    apply = jax.jit(lambda x: M.apply(graphdef, params, x))
    seq = np.array(prompt + [mask_id] * length)
    for _ in range(length):
        logits = np.asarray(apply(jax.numpy.asarray(seq[None])), np.float64)[0]
        logits[:, mask_id] = -np.inf
        masked = np.flatnonzero(seq == mask_id)
        probs = np.exp(logits[masked] - logits[masked].max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        best = int(probs.max(-1).argmax())
        seq[masked[best]] = probs[best].argmax()
    return [int(t) for t in seq[len(prompt):]]


def test_greedy_check_matches_the_official_procedure(run):
    from llada_jax.eval.harness_model import LladaJaxLM

    export, _, _ = run
    lm = LladaJaxLM(export, check_greedy="true", mc_num="4", mc_batch_size="4", gen_batch_size="8")
    graphdef, params, _ = exports.load_model(export)
    prompts = [[40, 41, 42], [50, 51, 52], [60, 61, 62]]  # one shape: one compilation on each side
    decoded = [greedy_reference(graphdef, params, p, 3, 259) for p in prompts]
    altered = [d[:-1] + [(d[-1] + 1) % 250 + 3] for d in decoded]
    pairs = [(p, d) for p, d in zip(prompts, decoded)] + [(p, a) for p, a in zip(prompts, altered)]
    assert lm.greedy_matches(pairs) == [True] * 3 + [False] * 3


def test_task_settings_take_defaults_then_the_preset_then_the_flags():
    from llada_jax.config import ConfigError
    from llada_jax.eval.runner import task_settings
    from llada_jax.eval.settings import EvalSettings, parse_value

    shots, settings = task_settings("arc_challenge", "llada_base", {"mc_num": 8}, None)
    assert shots == 0 and (settings.mc_num, settings.mc_batch_size, settings.cfg_scale) == (8, 8, 0.5)
    assert settings.estimator == "official" and settings.gen_length == EvalSettings().gen_length
    shots, settings = task_settings("local_mc", None, {"estimator": "official"}, 3)
    assert shots == 3 and settings.estimator == "official" and settings.mc_num == EvalSettings().mc_num
    # lm_eval --model_args strings, typed by the field they set
    assert [parse_value("cfg_scale", "0.5"), parse_value("check_greedy", "True"), parse_value("threshold", "none"),
            parse_value("mc_num", "64")] == [0.5, True, None, 64]
    with pytest.raises(ConfigError, match="mc_nums is not a llada_jax eval setting"):
        parse_value("mc_nums", "4")
    with pytest.raises(ConfigError, match="steps=99 does not split over 2 blocks"):
        EvalSettings(gen_length=64, block_length=32, steps=99).check()


def test_generate_until_fast_modes_match_the_sample_cli(run, capsys):
    """threshold parallel decoding with the prefix cache, through the harness model's API and `sample`."""
    from types import SimpleNamespace

    from llada_jax.eval.harness_model import LladaJaxLM

    export, _, _ = run
    lm = LladaJaxLM(export, threshold="0.5", cache="prefix", gen_batch_size="8",
                    **{k: str(v) for k, v in GEN.items()})
    got = lm.generate_until([SimpleNamespace(args=(d["prompt"], {"until": ["\n"]})) for d in GEN_DOCS])
    assert main(["sample", f"--checkpoint={export}", *[f"--prompt={d['prompt']}" for d in GEN_DOCS],
                 "--threshold=0.5", "--cache=prefix", *[f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()]]) == 0
    text = capsys.readouterr().out
    for doc, answer in zip(GEN_DOCS, got):
        assert answer == req_lib.cut_at_stops(text.split(f"=== {doc['prompt']}\n", 1)[1], ["\n"])


def test_generate_until_uses_the_tasks_own_length_unless_a_flag_sets_one(run, capsys):
    """The model here has 64 positions; before, every generation task asked for the default 256 tokens and was
    refused unless --gen-length was given, whatever length the task itself asks for (max_gen_toks)."""
    from types import SimpleNamespace

    from llada_jax.config import ConfigError
    from llada_jax.eval.harness_model import LladaJaxLM

    export, _, _ = run
    lm = LladaJaxLM(export, gen_batch_size="8")
    requests = [SimpleNamespace(args=(d["prompt"], {"until": ["\n"], "max_gen_toks": 8})) for d in GEN_DOCS]
    got = lm.generate_until(requests)
    assert main(["sample", f"--checkpoint={export}", *[f"--prompt={d['prompt']}" for d in GEN_DOCS],
                 "--gen-length=8", "--steps=8", "--block-length=8"]) == 0
    text = capsys.readouterr().out
    for doc, answer in zip(GEN_DOCS, got):  # one token per step, one block of the task's 8 tokens
        assert answer == req_lib.cut_at_stops(text.split(f"=== {doc['prompt']}\n", 1)[1], ["\n"])
    with pytest.raises(ConfigError, match="the default gen_length=256 leaves no room for a prompt"):
        lm.generate_until([SimpleNamespace(args=("Q:", {"until": ["\n"]}))])  # a task that does not say
    lm.settings = lm.settings.replace(gen_length=16, steps=16, block_length=8)  # the flags win over the task
    assert lm._schedule(8) == (16, 16, 8)
    with pytest.raises(ConfigError, match="cfg_scale=nan is not a finite number"):
        LladaJaxLM(export, cfg_scale="nan")  # lm_eval --model_args, like every float flag
