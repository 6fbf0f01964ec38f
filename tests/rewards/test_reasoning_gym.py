"""Reasoning Gym entries generated here, scored by our verifier against RG's own score_answer."""

import json

import pytest
import reasoning_gym

from prorl_jax import rewards
from prorl_jax.errors import DataError

gym_reward = rewards.get("reasoning_gym")
TASKS = ["basic_arithmetic", "letter_counting", "spell_backward", "knights_knaves",
         "family_relationships", "countdown", "mini_sudoku", "caesar_cipher", "word_sorting"]


@pytest.mark.parametrize("task", TASKS)
def test_task_family_right_and_wrong(task):
    score_answer = reasoning_gym.get_score_answer_fn(task)
    for raw in reasoning_gym.create_dataset(task, size=2, seed=11):
        # The entry reaches the trainer through JSON (tuples become lists).
        entry = json.loads(json.dumps(raw))
        gt = {"task": task, "entry": entry}
        right = f"<think>hmm <answer>nope</answer></think>Done.\n<answer>{entry['answer']}</answer>"
        assert gym_reward(right, gt) == 1.0
        wrong = "<answer>definitely not it 98765</answer>"
        r = gym_reward(wrong, json.dumps(gt))
        assert r < 1.0
        assert r == pytest.approx(float(score_answer("definitely not it 98765", entry)))


def test_missing_answer_tag_and_bad_ground_truth():
    entry = json.loads(json.dumps(reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=1)[0]))
    assert gym_reward(f"The answer is {entry['answer']}", {"task": "basic_arithmetic",
                                                           "entry": entry}) == 0.0
    with pytest.raises(DataError, match="unknown Reasoning Gym task 'no_such_task'"):
        gym_reward("<answer>1</answer>", {"task": "no_such_task", "entry": entry})
    with pytest.raises(DataError, match="reasoning_gym ground truth"):
        gym_reward("<answer>1</answer>", {"entry": entry})


def test_composite_entries_score_with_their_source_dataset():
    from reasoning_gym.composite import DatasetSpec

    specs = [DatasetSpec("basic_arithmetic", 1.0, {}), DatasetSpec("letter_counting", 1.0, {})]
    ds = reasoning_gym.create_dataset("composite", size=4, seed=5, datasets=specs)
    for raw in ds:
        entry = json.loads(json.dumps(raw))
        gt = {"task": "composite", "entry": entry}
        assert gym_reward(f"<answer>{entry['answer']}</answer>", gt) == 1.0
        assert gym_reward("<answer>-123456789</answer>", gt) == pytest.approx(
            float(ds.score_answer("-123456789", raw)))
