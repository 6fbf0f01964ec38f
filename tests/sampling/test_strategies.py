"""Sampling strategies on fixed logits: truncation, statistics, logprob definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax.errors import ConfigError, UserError
from prorl_jax.rl.logprobs import token_logprobs  # what the sampler calls
from prorl_jax.sampling.strategies import (
    Categorical,
    Greedy,
    SamplingParams,
    strategy_for,
)

PROBS = np.array([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
DRAWS = 200_000


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _draw(strategy, logits, n=DRAWS, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    return np.asarray(jax.jit(strategy.__call__)(batch, keys))


def _expected(logits, temperature, top_k=0, top_p=1.0):
    """The truncated, renormalised softmax written out directly from the definitions."""
    p = _softmax(np.asarray(logits, np.float64) / temperature)
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(len(p), bool)
    mass = 0.0
    for rank, i in enumerate(order):
        if top_k and rank >= top_k:
            break
        keep[i] = True
        mass += p[i]
        if mass >= top_p * (p[order[:top_k]].sum() if top_k else 1.0):
            break
    q = np.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.5, 0, 1.0),
    (1.0, 3, 1.0),
    (1.0, 0, 0.7),
    (1.2, 4, 0.8),
])
def test_empirical_frequencies_match_truncated_softmax(temperature, top_k, top_p):
    logits = np.log(PROBS)
    strategy = strategy_for(
        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p), len(PROBS))
    tokens = _draw(strategy, logits)
    freq = np.bincount(tokens, minlength=len(PROBS)) / DRAWS
    expected = _expected(logits, temperature, top_k, top_p)
    # Tolerance: 5 binomial standard errors per token (a false failure has odds < 1e-6).
    tol = 5 * np.sqrt(expected * (1 - expected) / DRAWS)
    np.testing.assert_array_less(np.abs(freq - expected), tol + 1e-12)
    # Truncated tokens are never drawn.
    assert np.all(freq[expected == 0] == 0)


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    # Mass before the third token is 0.6 < 0.7, so it is kept; the fourth is not.
    expected = _expected(np.log(PROBS), 1.0, 0, 0.7)
    assert np.count_nonzero(expected) == 3
    tokens = _draw(strategy_for(SamplingParams(top_p=0.7), 6), np.log(PROBS), n=20_000)
    assert set(np.unique(tokens)) == {0, 1, 2}


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = jax.random.normal(jax.random.key(1), (64, 1000)) * 3
    keys = jax.random.split(jax.random.key(2), 64)
    greedy = Greedy()(logits, keys)
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6),
                   SamplingParams(temperature=2.0, top_k=1), SamplingParams(top_p=1e-6, top_k=50)):
        np.testing.assert_array_equal(strategy_for(params, 1000)(logits, keys), greedy)


def test_same_keys_same_tokens_and_rows_independent_of_batch():
    logits = jax.random.normal(jax.random.key(3), (8, 50))
    keys = jax.random.split(jax.random.key(4), 8)
    s = strategy_for(SamplingParams(temperature=1.0, top_p=0.9), 50)
    full = np.asarray(s(logits, keys))
    np.testing.assert_array_equal(full, s(logits, keys))
    # Each row's draw depends on its own logits and key only.
    np.testing.assert_array_equal(full[3:5], s(logits[3:5], keys[3:5]))


def test_token_logprobs_is_untruncated_tempered_log_softmax():
    logits = np.random.default_rng(0).normal(size=(3, 5, 11)).astype(np.float32)
    tokens = np.random.default_rng(1).integers(0, 11, size=(3, 5)).astype(np.int32)
    got = np.asarray(token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), 1.3))
    z = logits.astype(np.float64) / 1.3
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, np.take_along_axis(ref, tokens[..., None], -1)[..., 0],
                               atol=1e-6)
    assert strategy_for(SamplingParams(temperature=0), 11).logprob_temperature == 1.0
    assert strategy_for(SamplingParams(temperature=0.6, top_k=3), 11).logprob_temperature == 0.6


def test_static_fields_in_tree_structure_numbers_are_leaves():
    a = strategy_for(SamplingParams(temperature=0.6, top_p=0.95), 100)
    b = strategy_for(SamplingParams(temperature=1.2, top_p=0.5), 100)
    c = strategy_for(SamplingParams(temperature=1.2, top_p=0.5, top_k=5), 100)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.structure(a) != jax.tree.structure(c)
    assert isinstance(strategy_for(SamplingParams(temperature=1.0, top_k=100), 100), Categorical)
    assert strategy_for(SamplingParams(temperature=1.0, top_k=100), 100).top_k == 0  # k >= V: off


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
    dict(max_new_tokens=0), dict(n=0), dict(stop_token_ids=(-1,)),
])
def test_sampling_params_validation(bad):
    with pytest.raises(ConfigError) as e:
        SamplingParams(**bad)
    assert isinstance(e.value, UserError)


def test_stop_token_ids_normalised_to_int_tuple():
    assert SamplingParams(stop_token_ids=[3, np.int64(5)]).stop_token_ids == (3, 5)
