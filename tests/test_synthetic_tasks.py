"""The generated tasks: answers checked by an independent solver, determinism, held-out split, encoding."""
import numpy as np
import pytest

from llada_jax.config import ConfigError
from llada_jax.data import synthetic_tasks as tasks
from llada_jax.data.vocab import ByteVocabulary


def solve(prompt: str) -> str:
    """An independent reading of each prompt format."""
    body = prompt.rstrip("=")
    if body.startswith("rev "):
        return "".join(reversed(body[4:]))
    if body.startswith("rep "):
        return body[4:] * 8
    if body.startswith("sort "):
        return "".join(str(d) for d in sorted(int(c) for c in body[5:]))
    a, b = body.split("+")
    return str(int(a) + int(b))


@pytest.mark.parametrize("task", tasks.TASKS)
def test_answers_are_right_and_fit_the_width(task):
    batch = tasks.examples(task, 200, seed=3, size=4)
    assert all(solve(e.prompt) == e.answer for e in batch)
    assert max(len(e.answer) for e in batch) <= tasks.answer_width(task, 4)
    assert tasks.examples(task, 200, seed=3, size=4) == batch != tasks.examples(task, 200, seed=4, size=4)


def test_addition_reaches_the_widest_answer():
    widths = {len(e.answer) for e in tasks.examples("addition", 2000, seed=0, size=3)}
    assert max(widths) == tasks.answer_width("addition", 3) == 4 and min(widths) == 1


def test_split_holds_out_the_test_prompts():
    train, test = tasks.train_test_split("addition", 500, 100, seed=1, size=2)
    assert len(train) == 500 and len(test) == 100
    assert not {e.prompt for e in train} & {e.prompt for e in test}


def test_exact_match():
    ref = [tasks.Example("1+1=", "2"), tasks.Example("2+2=", "4")]
    assert tasks.exact_match(["2 ", "5"], ref) == 0.5 and tasks.exact_match(["2", "4"], ref) == 1.0
    with pytest.raises(ValueError, match="1 predictions for 2 examples"):
        tasks.exact_match(["2"], ref)


def test_encode_left_pads_prompts_and_ends_answers_with_eos():
    vocab = ByteVocabulary()
    tokens, valid = tasks.encode([tasks.Example("9+9=", "18"), tasks.Example("10+5=", "15")], vocab, 6, 3)
    np.testing.assert_array_equal(tokens[0], [0, 0] + vocab.encode("9+9=") + vocab.encode("18") + [1])
    np.testing.assert_array_equal(valid[1], [False] + [True] * 5)
    assert vocab.decode(tokens[1, 1:6]) == "10+5="
    with pytest.raises(ConfigError, match="does not fit prompt_width=3"):
        tasks.encode([tasks.Example("10+5=", "15")], vocab, 3, 3)


def test_bad_task_names_the_choices():
    with pytest.raises(ConfigError, match="task='mult' is unknown; use one of addition, reversal, sorting"):
        tasks.examples("mult", 3, seed=0)
