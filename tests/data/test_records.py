"""Record validation, per-domain ground-truth checks and JSON safety."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prorl_jax.data.records import Record, json_safe, make_record, normalize_ground_truth


def test_round_trip_through_dict_and_json():
    r = make_record(7, "code", [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "add two numbers"}],
                    '{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}', {"k": (1, 2)})
    assert r.id == "7"
    assert r.ground_truth == {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    assert r.meta == {"k": [1, 2]}
    again = Record.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


@pytest.mark.parametrize("domain,gt,msg", [
    ("math", ["1"], "math ground_truth must be an answer string"),
    ("math", "  ", "empty string"),
    ("stem", True, "stem ground_truth must be an answer string"),
    ("code", '{"inputs": [1]', "not valid JSON"),
    ("code", {"inputs": ["1"], "outputs": []}, "1 inputs and 0 outputs"),
    ("reasoning_gym", {"task": "x"}, "reasoning_gym ground_truth must be"),
    ("ifeval", {"instruction_id_list": ["a"], "kwargs": [{}, {}]}, "as long as"),
    ("ifeval", {"instruction_id_list": []}, "non-empty 'instruction_id_list'"),
    ("chess", "e4", "unknown domain 'chess'"),
    ("math", None, "missing field 'ground_truth'"),
])
def test_bad_ground_truths_name_the_problem(domain, gt, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        normalize_ground_truth(domain, gt)


def test_numbers_become_answer_text_and_ifeval_nones_are_dropped():
    assert normalize_ground_truth("math", 42) == "42"
    assert normalize_ground_truth("math", 0.5) == "0.5"
    gt = normalize_ground_truth("ifeval", {
        "instruction_id_list": ["length_constraints:number_words", "keywords:existence"],
        "kwargs": [{"num_words": 50, "relation": "at least", "keywords": None},
                   {"num_words": None, "relation": None, "keywords": ["x"]}]})
    assert gt["kwargs"] == [{"num_words": 50, "relation": "at least"}, {"keywords": ["x"]}]


@pytest.mark.parametrize("prompt,msg", [
    ("", "empty"),
    ([], "empty list"),
    ([{"role": "robot", "content": "hi"}], "role 'robot'"),
    ([{"role": "system", "content": "hi"}], "no non-empty user message"),
    ([{"role": "user"}], "string 'content'"),
    (3, "text or a list of chat messages"),
])
def test_bad_prompts(prompt, msg):
    with pytest.raises(ValueError, match=msg):
        make_record("a", "math", prompt, "1")


def test_json_safe_matches_a_json_round_trip_on_numpy_and_tuples():
    x = {"grid": ((1, 2), (3, 4)), 3: np.int64(5), "f": np.float32(0.5), "s": np.str_("a"),
         "b": np.bool_(True), "arr": np.arange(3), "set": {3, 1, 2}}
    safe = json_safe(x)
    assert safe == json.loads(json.dumps(safe))
    assert safe == {"grid": [[1, 2], [3, 4]], "3": 5, "f": 0.5, "s": "a", "b": True,
                    "arr": [0, 1, 2], "set": [1, 2, 3]}
    assert type(safe["s"]) is str and type(safe["3"]) is int and type(safe["b"]) is bool
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        json_safe({"x": float("nan")})
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        json_safe({"x": object()})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers(), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_json_safe_is_a_fixed_point_of_json(x):
    try:
        safe = json_safe(x)
    except ValueError as e:
        assert "collide" in str(e)  # keys 1 and "1" in one dict: refused, not merged
        return
    assert json.loads(json.dumps(safe)) == safe
    assert json_safe(safe) == safe


def test_one_list_of_domains_with_a_verifier_each():
    from prorl_jax.data import records
    from prorl_jax.rewards import registry

    assert registry.DOMAINS is records.DOMAINS
    assert set(registry._MODULES) == set(records.DOMAINS)
