"""Procedural Reasoning Gym source: generation, JSON safety, and Reasoning Gym's own
score_answer on the JSON-round-tripped entries."""

import json

import pytest
import reasoning_gym

from prorl_jax.config import SourceConfig
from prorl_jax.data import Record, load_source, restore_entry
from prorl_jax.errors import ConfigError

# Several families: arithmetic, algorithmic, cognition, games, graphs, logic, arc.
TASKS = ("basic_arithmetic", "chain_sum", "word_sorting", "family_relationships",
         "knights_knaves", "course_schedule", "number_sorting", "arc_1d", "arc_agi")


@pytest.fixture(scope="module")
def records():
    cfg = SourceConfig(kind="reasoning_gym", tasks=TASKS, size=4, seed=11,
                       task_config={"chain_sum": {"min_terms": 3, "max_terms": 3}})
    return load_source(cfg)


def _through_json(rec: Record) -> Record:
    return Record.from_dict(json.loads(json.dumps(rec.to_dict())))


def test_generation_is_deterministic_and_shaped(records):
    assert len(records) == 4 * len(TASKS)
    assert [r.ground_truth["task"] for r in records[::4]] == list(TASKS)
    r = records[4]
    assert r.id == "reasoning_gym:chain_sum:11:0" and r.domain == "reasoning_gym"
    assert r.prompt == r.ground_truth["entry"]["question"]
    # task_config reached Reasoning Gym: exactly three terms, two operators.
    expr = r.ground_truth["entry"]["metadata"]["expression"]
    assert len(expr.replace("-", "+").split("+")) == 3
    again = load_source(SourceConfig(kind="reasoning_gym", tasks=("chain_sum",), size=4, seed=11,
                                     task_config={"chain_sum": {"min_terms": 3, "max_terms": 3}}))
    assert [a.to_dict() for a in again] == [x.to_dict() for x in records[4:8]]
    other = load_source(SourceConfig(kind="reasoning_gym", tasks=("chain_sum",), size=4, seed=12))
    assert [a.prompt for a in other] != [x.prompt for x in records[4:8]]


def test_entries_are_json_safe_and_score_answer_accepts_them(records):
    scorers = {t: reasoning_gym.create_dataset(t, size=1, seed=0) for t in TASKS}
    for rec in records:
        rt = _through_json(rec)
        assert rt == rec  # nothing JSON cannot hold (tuples, numpy values) is left
        task, entry = rt.ground_truth["task"], restore_entry(rt.ground_truth["task"],
                                                            rt.ground_truth["entry"])
        fn = scorers[task].score_answer
        assert fn(entry["answer"], entry) == 1.0, (task, entry["answer"])
        assert fn("definitely not the answer", entry) < 1.0, task
        assert fn(None, entry) == 0.0, task


def test_arc_grids_need_restore_entry(records):
    rec = next(r for r in records if r.ground_truth["task"] == "arc_agi")
    entry = _through_json(rec).ground_truth["entry"]
    ds = reasoning_gym.create_dataset("arc_agi", size=1, seed=0)
    # Why restore_entry exists: JSON lists != the tuple grid score_answer compares with.
    assert ds.score_answer(entry["answer"], entry) < 1.0
    assert ds.score_answer(entry["answer"], restore_entry("arc_agi", entry)) == 1.0
    assert restore_entry("chain_sum", {"metadata": {"x": [1]}}) == {"metadata": {"x": [1]}}


def test_reward_verifier_scores_generated_tasks(records):
    rewards = pytest.importorskip("prorl_jax.rewards")
    score = rewards.get("reasoning_gym")
    for rec in records:
        if rec.ground_truth["task"] in ("arc_agi",):
            continue  # covered by test_reward_verifier_restores_arc_grids
        gt = _through_json(rec).ground_truth
        answer = gt["entry"]["answer"]
        assert score(f"<think>hmm</think><answer>{answer}</answer>", gt) == 1.0, gt["task"]
        assert score("<answer>zzz</answer>", gt) < 1.0, gt["task"]


def test_reward_verifier_restores_arc_grids(records):
    rewards = pytest.importorskip("prorl_jax.rewards")
    rec = next(r for r in records if r.ground_truth["task"] == "arc_agi")
    gt = _through_json(rec).ground_truth
    assert rewards.get("reasoning_gym")(f"<answer>{gt['entry']['answer']}</answer>", gt) == 1.0


def test_bad_task_configuration():
    with pytest.raises(ConfigError, match="reasoning_gym task 'no_such_task': cannot create"):
        load_source(SourceConfig(kind="reasoning_gym", tasks=("no_such_task",), size=2))
    with pytest.raises(ConfigError, match="reasoning_gym task 'chain_sum': cannot create"):
        load_source(SourceConfig(kind="reasoning_gym", tasks=("chain_sum",), size=2,
                                 task_config={"chain_sum": {"bogus_option": 1}}))


def test_limit_and_per_task_size_override():
    recs = load_source(SourceConfig(kind="reasoning_gym", tasks=("gcd", "lcm"), size=5,
                                    task_config={"gcd": {"size": 2}}))
    assert [r.ground_truth["task"] for r in recs] == ["gcd"] * 2 + ["lcm"] * 5
    recs = load_source(SourceConfig(kind="reasoning_gym", tasks=("gcd", "lcm"), size=5, limit=6))
    assert len(recs) == 6
