"""Property tests: on arbitrary completions every verifier returns a float in [0, 1] (never an
exception), and box extraction handles arbitrary nesting."""

import json

import pytest
import reasoning_gym
from hypothesis import given, settings
from hypothesis import strategies as st

from prorl_jax import rewards
from prorl_jax.rewards.extract import last_boxed

PIECES = st.sampled_from(["\\boxed{", "{", "}", "</think>", "<answer>", "</answer>", "Answer: ",
                          "\\frac{1}{2}", "B", ",", "***", "\n\n", "x", " ", "$", "1.5", "```"])
COMPLETIONS = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=25).map("".join)
ENTRY = json.loads(json.dumps(reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=0)[0]))
GROUND_TRUTHS = {
    "math": "\\frac{1}{2}",
    "stem": "B",
    "reasoning_gym": {"task": "basic_arithmetic", "entry": ENTRY},
    "ifeval": {"instruction_id_list": ["punctuation:no_comma", "detectable_format:title",
                                       "length_constraints:number_paragraphs"],
               "kwargs": [{}, {}, {"num_paragraphs": 2}]},
}


@settings(max_examples=40, deadline=None)
@given(COMPLETIONS)
def test_rewards_in_unit_interval(completion):
    for domain, gt in GROUND_TRUTHS.items():
        r = rewards.get(domain)(completion, gt)
        assert isinstance(r, float) and 0.0 <= r <= 1.0


@given(st.lists(st.sampled_from(["{", "}", "a"]), max_size=30).map("".join))
def test_last_boxed_balanced(inner):
    found = last_boxed("\\boxed{" + inner + "}")
    if found is not None:
        depth = 0
        for ch in found:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0


def test_answer_text_is_what_each_verifier_reads():
    from prorl_jax.rewards.extract import answer_text

    think = "<think>draft <answer>no</answer> \\boxed{9}</think>"
    assert answer_text("reasoning_gym", think + " <answer> tenalp </answer>") == "tenalp"
    assert answer_text("reasoning_gym", think + " tenalp") is None
    assert answer_text("math", think + " so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert answer_text("math", think + " 1/2") is None
    assert answer_text("code", "```python\nprint(1)\n```") == "print(1)\n"
    assert answer_text("code", "print(1)") is None
    assert answer_text("ifeval", think + "  hello ") == "hello"
    assert answer_text("ifeval", think + "  ") is None
    with pytest.raises(ValueError, match="unknown reward domain"):
        answer_text("chess", "e4")
    # A Reasoning Gym completion without an answer scores 0, as answer_text says it has none.
    gt = {"task": "spell_backward", "entry": {"question": "q", "answer": "tenalp",
                                             "metadata": {"source_dataset": "spell_backward"}}}
    assert rewards.get("reasoning_gym")(think + " tenalp", gt) == 0.0
    assert rewards.get("reasoning_gym")(think + " <answer>tenalp</answer>", gt) == 1.0
