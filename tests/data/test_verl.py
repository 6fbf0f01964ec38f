"""A verl-format parquet file written here loads, formats through the chat template and
scores with the domain verifiers; the data_source / ability -> domain mapping."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prorl_jax.config import SourceConfig
from prorl_jax.data import ChatFormatter, domain_for_verl, load_source
from prorl_jax.errors import DataError

MATH_INSTR = "Let's think step by step and output the final answer within \\boxed{}."


def verl_row(data_source, ability, question, ground_truth, index, system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    return {"data_source": data_source, "prompt": prompt, "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": {"split": "train", "index": index}}


ROWS = [
    verl_row("deepscaler", "math", f"What is 1/2 + 1/4? {MATH_INSTR}", "\\frac{3}{4}", 0),
    verl_row("codecontests", "code", "Read n and print n squared.",
             json.dumps({"inputs": ["3\n", "5\n"], "outputs": ["9\n", "25\n"]}), 1,
             system="You are a careful programmer."),
    verl_row("house_rules", "instruction", "Describe the sea. Use no commas.",
             json.dumps({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}), 2),
    verl_row("gpqa_diamond", "science", "Which gas do plants absorb? (A) O2 (B) CO2", "B", 3),
]
COMPLETIONS = {  # domain -> (right, wrong)
    "math": ("<think>1/2+1/4</think> The answer is \\boxed{0.75}.", "\\boxed{\\frac{2}{3}}"),
    "code": ("```python\nn = int(input())\nprint(n * n)\n```",
             "```python\nn = int(input())\nprint(n + n)\n```"),
    "ifeval": ("The sea is vast and blue.", "The sea is vast, deep, and blue."),
    "stem": ("Plants take in carbon dioxide. \\boxed{B}", "\\boxed{A}"),
}


@pytest.fixture()
def verl_parquet(tmp_path):
    path = str(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def test_verl_parquet_loads_formats_and_scores(verl_parquet, r1_tokenizer):
    rewards = pytest.importorskip("prorl_jax.rewards")
    recs = load_source(SourceConfig(kind="verl", path=verl_parquet,
                                    domain_map={"house_rules": "ifeval"}))
    assert [r.domain for r in recs] == ["math", "code", "ifeval", "stem"]
    assert recs[0].meta == {"data_source": "deepscaler", "ability": "math", "style": "rule",
                            "extra_info": {"split": "train", "index": 0}}
    assert recs[1].ground_truth == {"inputs": ["3\n", "5\n"], "outputs": ["9\n", "25\n"]}

    fmt = ChatFormatter(r1_tokenizer, None, max_prompt_tokens=400)
    text = fmt.text(recs[0])
    assert text.count(MATH_INSTR) == 1  # verl prompts already carry it: not added twice
    assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>What is 1/2")
    assert text.endswith("<｜Assistant｜><think>\n")
    assert fmt.text(recs[1]).startswith("<｜begin▁of▁sentence｜>You are a careful programmer.")
    kept, ids = fmt.encode_batch(recs)
    assert len(kept) == 4 and all(ids)

    for rec in recs:
        right, wrong = COMPLETIONS[rec.domain]
        score = rewards.get(rec.domain)
        assert score(right, rec.ground_truth) == 1.0, rec.domain
        assert score(wrong, rec.ground_truth) == 0.0, rec.domain


def test_unmapped_verl_domain_is_an_error_naming_the_row(verl_parquet):
    with pytest.raises(DataError, match=r"train\.parquet row 2: unknown domain for "
                                        r"data_source='house_rules', ability='instruction' "
                                        r"\(map it with domain_map"):
        load_source(SourceConfig(kind="verl", path=verl_parquet))
    recs = load_source(SourceConfig(kind="verl", path=verl_parquet), on_bad_record="skip")
    assert [r.meta["data_source"] for r in recs] == \
        ["deepscaler", "codecontests", "gpqa_diamond"]


def test_verl_jsonl_missing_reward_model(tmp_path):
    path = tmp_path / "v.jsonl"
    rows = [ROWS[0], {k: v for k, v in ROWS[0].items() if k != "reward_model"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"v\.jsonl:2: missing field 'reward_model'"):
        load_source(SourceConfig(kind="verl", path=str(path)))


@pytest.mark.parametrize("data_source,ability,expect", [
    ("numina_olympiads", "math", "math"),
    ("lighteval/MATH", None, "math"),
    ("taco", "code", "code"),
    ("apps", None, "code"),
    ("reasoning_gym/boxnet", "logic", "reasoning_gym"),
    ("rg", "reasoning_gym", "reasoning_gym"),
    ("google/IFEval", None, "ifeval"),
    ("SCP-116K", None, "stem"),
    ("openai/gsm8k", None, "math"),
    ("mystery", "puzzles", None),
])
def test_default_domain_rules(data_source, ability, expect):
    assert domain_for_verl(data_source, ability, {}, None) == expect


def test_domain_map_wins_over_defaults_and_default_domain_is_last():
    assert domain_for_verl("taco", "code", {"taco": "stem"}, None) == "stem"
    assert domain_for_verl("x", "puzzles", {"puzzles": "reasoning_gym"}, None) == "reasoning_gym"
    assert domain_for_verl("mystery", "puzzles", {}, "math") == "math"
