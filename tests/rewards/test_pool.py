"""RewardPool / score_batch: input order, agreement with the direct verifiers, and recovery
from verifiers that raise, hang, crash their worker or return garbage."""

import json
import textwrap
import time

import pytest
import reasoning_gym

from prorl_jax import rewards
from prorl_jax.errors import ConfigError

HELPERS = textwrap.dedent("""
    import ctypes, os, time

    def exact(completion, ground_truth):
        return float(completion == ground_truth)

    def hang(completion, ground_truth):
        time.sleep(60)

    def crash(completion, ground_truth):
        os._exit(3)

    def segfault(completion, ground_truth):
        ctypes.string_at(0)

    def boom(completion, ground_truth):
        raise RuntimeError("boom")

    def nan(completion, ground_truth):
        return float("nan")

    def too_big(completion, ground_truth):
        return 1.5
""")
FAULTS = ["hang", "crash", "segfault", "boom", "nan", "too_big"]


@pytest.fixture
def extra(tmp_path, monkeypatch):
    (tmp_path / "pool_helpers.py").write_text(HELPERS)
    # Spawned workers inherit sys.path, so they can import the helpers too.
    monkeypatch.syspath_prepend(str(tmp_path))
    return {name: f"pool_helpers:{name}" for name in ["exact", *FAULTS]}


def mixed_items():
    entry = json.loads(json.dumps(reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]))
    ifeval_gt = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    code_gt = {"inputs": ["4"], "outputs": ["16"]}
    return [
        ("math", r"</think>\boxed{\frac{3}{6}}", "0.5"),
        ("math", r"\boxed{0.6}", "0.5"),
        ("stem", "Answer: C", "C"),
        ("reasoning_gym", f"<answer>{entry['answer']}</answer>", {"task": "basic_arithmetic",
                                                                 "entry": entry}),
        ("reasoning_gym", "<answer>nope</answer>", {"task": "basic_arithmetic", "entry": entry}),
        ("ifeval", "no commas here", ifeval_gt),
        ("ifeval", "a, b", ifeval_gt),
        ("code", "```python\nprint(int(input()) ** 2)\n```", code_gt),
        ("code", "```python\nprint(3)\n```", code_gt),
        ("math", "no box", "1"),
    ]


def test_score_batch_matches_direct_verifiers_in_order():
    items = mixed_items()
    direct = [rewards.get(d)(c, g) for d, c, g in items]
    assert direct == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    got, infos = rewards.score_batch(items, num_workers=2, timeout_s=20, return_info=True)
    assert got == direct
    assert all(isinstance(r, float) for r in got)
    assert not any(info.error for info in infos)
    assert infos[9].reason == r"no \boxed{} answer"
    assert rewards.score_batch(items, num_workers=0) == direct


def test_pool_recovers_from_faulty_verifiers(extra):
    items = [("exact", str(i), str(i % 2)) for i in range(6)]
    with rewards.RewardPool(num_workers=2, timeout_s=1.0, preload=(), extra_domains=extra) as pool:
        assert pool.score(items) == [1.0 if i < 2 else 0.0 for i in range(6)]
        faulty = [("exact", "a", "a")] + [(f, "x", None) for f in FAULTS] + [("exact", "b", "b")]
        start = time.monotonic()
        got, infos = pool.score(faulty, return_info=True)
        elapsed = time.monotonic() - start
        assert got == [1.0] + [0.0] * len(FAULTS) + [1.0]
        assert pool.errors == len(FAULTS)
        assert [i.error for i in infos] == [False] + [True] * len(FAULTS) + [False]
        reasons = dict(zip(FAULTS, (i.reason for i in infos[1:])))
        assert reasons["hang"].startswith("timeout")
        assert "crashed (exit code 3)" in reasons["crash"]
        assert "crashed" in reasons["segfault"]
        assert reasons["boom"] == "RuntimeError: boom"
        assert "not a finite float" in reasons["nan"] and "not a finite float" in reasons["too_big"]
        # One hang (1 s) plus worker restarts; far below the 60 s the verifier would take.
        assert elapsed < 10, elapsed
        # The same pool keeps working after replacing its workers.
        assert pool.score(items[:4]) == [1.0, 1.0, 0.0, 0.0]
        assert pool.errors == len(FAULTS)


def test_pool_errors_are_clear(extra):
    with pytest.raises(ConfigError, match="num_workers"):
        rewards.RewardPool(num_workers=0)
    with pytest.raises(ConfigError, match="shadows a built-in"):
        rewards.RewardPool(1, extra_domains={"math": "m:f"})
    with rewards.RewardPool(num_workers=1, timeout_s=1.0, preload=()) as pool:
        with pytest.raises(ConfigError, match="unknown reward domain 'chess'"):
            pool.score([("math", r"\boxed{1}", "1"), ("chess", "e4", "e4")])
        assert pool.score([]) == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.score([("math", r"\boxed{1}", "1")])
