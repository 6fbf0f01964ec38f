"""Answer extraction, the math verifier (Math-Verify equivalences) and the STEM verifier."""

import threading

import pytest

from prorl_jax import rewards
from prorl_jax.errors import ConfigError, DataError
from prorl_jax.rewards.extract import final_text, last_boxed, last_python_block, last_tag

math_reward = rewards.get("math")
stem_reward = rewards.get("stem")


def test_extract_helpers():
    assert final_text("a</think>b</think> c") == " c"
    assert final_text("no think") == "no think"
    assert last_boxed(r"\boxed{1} then \boxed{\frac{\sqrt{3}}{2}}") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed{unclosed {") is None
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_tag("<answer> a </answer><answer>b</answer>", "answer") == "b"
    assert last_python_block("```python\nx=1\n```\n```py\ny=2\n```") == "y=2\n"
    assert last_python_block("```\nx=1\n```") is None


@pytest.mark.parametrize("reference, answer", [
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\dfrac12"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    ("(1,2]", "(1, 2]"),
    ("(x+1)^2", "x^2+2x+1"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"-\frac{3}{4}", "-0.75"),
    ("6", r"\frac{12}{2}"),
    ("90", r"90^\circ"),
    ("3", "3.0"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}"),
    (12, "12"),
])
def test_math_equivalent(reference, answer):
    assert math_reward(rf"Let's see.</think>So the answer is $\boxed{{{answer}}}$.", reference) == 1.0


@pytest.mark.parametrize("reference, answer", [
    (r"\frac12", "0.51"),
    ("(1,2]", "[1,2]"),
    (r"2\sqrt3", r"3\sqrt2"),
    ("1/3", "0.333"),
    ("x^2+1", "x^2-1"),
    ("-4", "4"),
])
def test_math_not_equivalent(reference, answer):
    assert math_reward(rf"\boxed{{{answer}}}", reference) == 0.0


def test_math_uses_text_after_think_and_needs_a_box():
    assert math_reward(r"<think>\boxed{3}</think>The answer is \boxed{4}.", "4") == 1.0
    assert math_reward(r"<think>\boxed{4}</think>The answer is 3.", "4") == 0.0
    assert math_reward("The answer is 4.", "4") == 0.0
    assert math_reward(r"\boxed{}", "4") == 0.0
    assert math_reward(r"\boxed{1} no wait \boxed{2}", "2") == 1.0


def test_math_bad_ground_truth_and_domain():
    with pytest.raises(DataError, match="math ground truth"):
        math_reward(r"\boxed{1}", "")
    with pytest.raises(DataError, match="completion must be a str"):
        math_reward(None, "1")
    with pytest.raises(ConfigError, match="unknown reward domain 'physics'"):
        rewards.get("physics")


def test_math_off_main_thread():
    # Math-Verify's signal-based timeouts only work on the main thread; the verifier must
    # still work when the trainer calls it from another thread.
    out = []
    t = threading.Thread(target=lambda: out.append(math_reward(r"\boxed{\frac{2}{4}}", "0.5")))
    t.start()
    t.join()
    assert out == [1.0]


@pytest.mark.parametrize("completion, reference, expected", [
    (r"</think>\boxed{B}", "B", 1.0),
    (r"</think>\boxed{\text{(B)}}", "B", 1.0),
    ("Reasoning...\nAnswer: (C) 3.2 m/s", "C", 1.0),
    ("**Final Answer:** D.", "(D)", 1.0),
    (r"\boxed{C}", "B", 0.0),
    ("Answer: Both are wrong", "B", 0.0),
    ("I think it is B", "B", 0.0),
    ("<think>Answer: B</think>Answer: A", "B", 0.0),
    ("Answer: Photosynthesis", "photosynthesis", 1.0),
    (r"\boxed{\frac{1}{4}}", "0.25", 1.0),
    (r"\boxed{9.8 m/s^2}", "9.8 m/s^2", 1.0),
    ("Answer: mitosis", "meiosis", 0.0),
    ("Answer: 0.3", "0.25", 0.0),
])
def test_stem(completion, reference, expected):
    assert stem_reward(completion, reference) == expected


def test_stem_bad_ground_truth():
    with pytest.raises(DataError, match="stem ground truth"):
        stem_reward("Answer: A", "  ")
