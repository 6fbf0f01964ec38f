"""pass@k estimator against exact enumeration of k-subsets, exact rational arithmetic, edges."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prorl_jax.errors import UserError
from prorl_jax.eval.passk import (
    EvalError,
    parse_ks,
    pass_at_k,
    pass_at_k_curve,
    successes,
)


def enumerate_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return hits / len(subsets)


def exact_rational(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_matches_enumeration_for_every_small_case():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(enumerate_pass_at_k(n, c, k),
                                                           abs=1e-13), (n, c, k)


def test_vectorised_equals_scalar_over_mixed_problems():
    n = np.array([8, 8, 5, 7, 6, 3])
    c = np.array([0, 3, 5, 1, 6, 2])
    got = pass_at_k(n, c, 3)
    assert got.shape == (6,)
    for i in range(6):
        assert got[i] == pytest.approx(enumerate_pass_at_k(int(n[i]), int(c[i]), 3), abs=1e-13)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6000), data=st.data())
def test_large_n_matches_exact_rationals(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, min(n, 256)))
    got = pass_at_k(n, c, k)
    want = exact_rational(n, c, k)
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-15)


def test_small_values_keep_relative_precision():
    # 1 success in 5000 samples, k = 1: exactly 1/5000, which "1 - product" would blur.
    assert pass_at_k(5000, 1, 1) == pytest.approx(1 / 5000, rel=1e-13)
    assert pass_at_k(4096, 2, 3) == pytest.approx(exact_rational(4096, 2, 3), rel=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0      # k = n: the one success is always drawn
    assert pass_at_k(10, 3, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 4, 7) == 1.0       # fewer than k failures
    assert math.copysign(1.0, pass_at_k(10, 0, 5)) == 1.0  # not -0.0


def test_k_greater_than_n_is_an_error():
    with pytest.raises(EvalError, match="exceeds the number of samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(UserError):
        pass_at_k(np.array([8, 4]), np.array([1, 1]), 5)


@pytest.mark.parametrize("n,c,k,msg", [(4, 5, 1, "0 <= c <= n"), (4, -1, 1, "0 <= c <= n"),
                                       (4, 1, 0, "positive integer"), (4, 1, 1.5, "positive"),
                                       (4.5, 1, 1, "whole numbers")])
def test_bad_arguments(n, c, k, msg):
    with pytest.raises(EvalError, match=msg):
        pass_at_k(n, c, k)


def test_chunking_does_not_change_results(monkeypatch):
    import prorl_jax.eval.passk as passk
    rng = np.random.default_rng(0)
    n = rng.integers(64, 300, size=50)
    c = rng.integers(0, 64, size=50)
    full = pass_at_k(n, c, 16)
    monkeypatch.setattr(passk, "_CHUNK_ELEMENTS", 100)
    np.testing.assert_array_equal(pass_at_k(n, c, 16), full)
    for i in range(50):
        assert full[i] == pytest.approx(exact_rational(int(n[i]), int(c[i]), 16), rel=1e-11)


def test_successes_threshold_for_continuous_rewards():
    r = [0.0, 0.5, 0.99, 1.0]
    assert successes(r).tolist() == [False, False, False, True]
    assert successes(r, threshold=0.5).tolist() == [False, True, True, True]


def test_curve_means_over_problems_and_reports_mean_reward():
    rewards = [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    out = pass_at_k_curve(rewards, [1, 2, 4])
    assert out["num_problems"] == 3
    # pass@1 per problem: 1/4, 2/4, 0 -> mean 0.25; pass@2: 1/2, 5/6, 0; pass@4: 1, 1, 0.
    assert out["pass@k"][1] == pytest.approx(0.25)
    assert out["pass@k"][2] == pytest.approx((0.5 + 5 / 6) / 3)
    assert out["pass@k"][4] == pytest.approx(2 / 3)
    assert out["mean_reward"] == pytest.approx((0.25 + 0.75 + 0.0) / 3)
    lenient = pass_at_k_curve(rewards, [1], threshold=0.5)
    assert lenient["pass@k"][1] == pytest.approx((0.25 + 1.0) / 3)


def test_parse_ks():
    assert parse_ks("4,1,2,2") == [1, 2, 4]
    assert parse_ks("", n=20) == [1, 2, 4, 8, 16]
    with pytest.raises(EvalError, match="exceeds --n"):
        parse_ks("1,8", n=4)
    with pytest.raises(EvalError, match="integers"):
        parse_ks("1,two")
    with pytest.raises(EvalError, match="positive"):
        parse_ks("0,1")
