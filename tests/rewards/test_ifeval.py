"""IFEval instruction checkers: one satisfying and one violating response per instruction."""

import json

import pytest

from prorl_jax import rewards
from prorl_jax.errors import DataError
from prorl_jax.rewards.ifeval_reward import instruction_ids

ifeval_reward = rewards.get("ifeval")

# (instruction id, kwargs, satisfying response, violating response)
CASES = [
    ("keywords:existence", {"keywords": ["river", "stone"]},
     "The River carried a stone.", "The river was calm."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat Cat cat!", "cat dog"),  # substrings count, as in the reference: "category" has "cat"
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "one cat here", "cat and cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]},
     "A badge is fine.", "That was Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zazz zoo", "zoo"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Just four words here.", "These are clearly five words."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "one two three", "one two"),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Hi there. Dr. Who came! Did he stay?", "One. Two."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "First part.\n***\nSecond part.", "First part.\n***\n***\nSecond."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
     "Intro here.\n\n\"Then,\" he said.", "Intro here.\n\nAfter that."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name], see you."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Body.\n\nP. S. Remember milk.", "Body. PS remember milk."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "Items:\n* one\n- two", "Items:\n* one\n* two\n* three"),
    ("detectable_format:constrained_response", {},
     "My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*first* and **second**", "*first* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {},
     '```json\n{"a": [1, 2]}\n```', '{"a": 1,}'),
    ("detectable_format:title", {},
     "<<Ode to Rain>>\nDrops fall.", "<<>>\nDrops fall."),
    ("combination:two_responses", {},
     "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "Write a poem. Roses are red.", "Roses are red. Write a poem."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Done. Any other questions?  ", "Any other questions? Done."),
    ("startend:quotation", {}, '"All quoted."', '"Half quoted.'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA and ESA met.", "NASA met."),
    ("change_case:english_capital", {}, "THIS WHOLE ANSWER IS WRITTEN IN CAPITAL LETTERS.",
     "ALL CAPS but one."),
    ("language:response_language", {"language": "de"},
     "Das ist ein deutscher Satz über das Wetter heute.",
     "This is clearly an English sentence about the weather."),
    ("change_case:english_lowercase", {}, "all lower case.", "Not lower."),
    ("punctuation:no_comma", {}, "No commas here.", "A, B."),
]


def _gt(iid, kwargs):
    return {"instruction_id_list": [iid], "kwargs": [kwargs]}


def test_at_least_twenty_instruction_types():
    assert len(instruction_ids()) >= 20
    assert {c[0] for c in CASES} == set(instruction_ids())


@pytest.mark.parametrize("iid, kwargs, good, bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker(iid, kwargs, good, bad):
    assert ifeval_reward(good, _gt(iid, kwargs)) == 1.0
    assert ifeval_reward(bad, _gt(iid, kwargs)) == 0.0


def test_fraction_think_and_none_kwargs():
    gt = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase",
                                  "keywords:existence"],
          # IFEval rows carry every kwarg name, unused ones set to None.
          "kwargs": [{"keywords": None}, {}, {"keywords": ["sun"], "num_words": None}]}
    assert ifeval_reward("<think>Thinking, Hard</think>the sun is up", gt) == 1.0
    assert ifeval_reward("the Sun, up", json.dumps(gt)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("gt, message", [
    ({"instruction_id_list": ["language:klingon"], "kwargs": [{}]}, "unknown IFEval instruction"),
    ({"instruction_id_list": ["keywords:existence"], "kwargs": [{}]}, "missing kwargs"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "1 instructions but 2"),
    ({"instruction_id_list": []}, "non-empty"),
    ("{not json", "not valid JSON"),
])
def test_bad_ground_truth(gt, message):
    with pytest.raises(DataError, match=message):
        ifeval_reward("text", gt)


def test_bad_relation():
    with pytest.raises(DataError, match="relation"):
        ifeval_reward("a b", _gt("length_constraints:number_words",
                                 {"num_words": 1, "relation": "exactly"}))
