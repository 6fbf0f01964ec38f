"""Code reward on well-behaved programs: test formats, partial credit, comparison rules."""

import json

import pytest

from prorl_jax import rewards
from prorl_jax.errors import DataError
from prorl_jax.rewards import code_reward

code = rewards.get("code")


def block(src: str) -> str:
    return f"<think>first try:\n```python\nprint('draft')\n```</think>\nFinal:\n```python\n{src}\n```\n"


ADD = {"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]}


def test_stdio_all_pass_and_json_string_ground_truth():
    src = "a, b = map(int, input().split())\nprint(a + b)"
    assert code(block(src), ADD) == 1.0
    assert code(block(src), json.dumps(ADD)) == 1.0


def test_partial_credit_and_trailing_whitespace():
    # Right only when the sum is positive; prints trailing spaces and blank lines.
    src = "a, b = map(int, input().split())\nprint(str(a + b if a + b > 0 else 1) + '   \\n\\n')"
    assert code(block(src), ADD) == pytest.approx(2 / 3)
    v = code_reward.score(block(src), ADD)
    assert "passed 2/3" in v.reason and "test 2: wrong output" in v.reason


def test_output_must_match_beyond_whitespace():
    assert code(block("print('3 ')\nprint()"), {"inputs": [""], "outputs": ["3"]}) == 1.0
    assert code(block("print(' 3')"), {"inputs": [""], "outputs": ["3"]}) == 0.0
    assert code(block("print(3)\nprint(4)"), {"inputs": [""], "outputs": ["3"]}) == 0.0


def test_list_inputs_and_outputs_are_lines():
    src = "n = int(input())\nfor _ in range(n): print(int(input()) * 2)"
    gt = {"inputs": [["2", "5", "7"]], "outputs": [["10", "14"]]}
    assert code(block(src), gt) == 1.0


def test_runtime_error_fails_that_test():
    src = "x = int(input())\nprint(10 // x)"
    gt = {"inputs": ["2", "0"], "outputs": ["5", "0"]}
    v = code_reward.score(block(src), gt)
    assert v.reward == 0.5 and "exit code 1" in v.reason and "ZeroDivisionError" in v.reason


def test_call_based_function_and_solution_class():
    gt = {"fn_name": "two_sum", "inputs": [[[2, 7, 11], 9], [[3, 3], 6]], "outputs": [[0, 1], [[0, 1]]]}
    fn = ("def two_sum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n"
          "        if target - x in seen:\n            return (seen[target - x], i)\n"
          "        seen[x] = i\n")
    assert code(block(fn), gt) == 1.0
    cls = "class Solution:\n    def two_sum(self, nums, target):\n        return [0, 1]\n"
    assert code(block(cls), gt) == 1.0
    wrong = "def two_sum(nums, target):\n    return [1, 0]\n"
    assert code(block(wrong), gt) == 0.0
    # A stdin-reading main block must not run in call-based mode.
    main = fn + "if __name__ == '__main__':\n    input()\n"
    assert code(block(main), gt) == 1.0


def test_no_block_syntax_error_and_timeout_give_zero():
    assert code("print(3)", ADD) == 0.0
    assert code("```\nprint(3)\n```", ADD) == 0.0
    v = code_reward.score(block("def f(:\n  pass"), ADD)
    assert v.reward == 0.0 and v.reason.startswith("syntax error")
    # Each test is fast, but together they exceed the budget: reward 0.
    slow = "import time\ntime.sleep(0.4)\na, b = map(int, input().split())\nprint(a + b)"
    v = code_reward.score(block(slow), ADD, timeout_s=1.0)
    assert v.reward == 0.0 and "time budget" in v.reason


@pytest.mark.parametrize("gt, message", [
    ({"inputs": ["1"]}, "'inputs' and 'outputs'"),
    ({"inputs": ["1", "2"], "outputs": ["1"]}, "2 inputs and 1 outputs"),
    ({"inputs": [], "outputs": []}, "non-zero"),
    ("not json", "not valid JSON"),
    ({"inputs": ["1"], "outputs": ["1"], "fn_name": "bad name"}, "identifier"),
])
def test_bad_tests(gt, message):
    with pytest.raises(DataError, match=message):
        code(block("print(1)"), gt)


@pytest.mark.skipif(rewards.protections().drop_uid and not rewards.protections().namespaces,
                    reason="uid drop without a mount namespace cannot expose a private install")
def test_snippets_can_import_stdlib_and_installed_packages():
    # The sandbox uid must reach the interpreter's installation even when it lives under a
    # private directory such as a 0700 /root (exposed read-only inside the namespace).
    src = ("import heapq, statistics, fractions, numpy\n"
           "print(statistics.median([3, 1, 2]), int(numpy.add(2, 2)))")
    v = code_reward.score(block(src), {"inputs": [""], "outputs": ["2 4"]})
    assert v.reward == 1.0, v
