"""Chunked logprobs / entropy from hidden states: equal to the unchunked forms, and flat memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax import losses as L
from prorl_jax.errors import ConfigError


def _inputs(B, T, D, V, dtype=jnp.float32, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k1, (B, T, D), jnp.float32).astype(dtype)
    w = (jax.random.normal(k2, (D, V), jnp.float32) / np.sqrt(D) * 3).astype(dtype)
    tok = jax.random.randint(k3, (B, T), 0, V)
    return h, w, tok


def _unchunked(h, w, tok, temperature):
    logits = jnp.einsum("BTD,DV->BTV", h, w, preferred_element_type=jnp.float32)
    return (L.token_logprobs(logits, tok, temperature),
            L.entropy_from_logits(logits, temperature))


@pytest.mark.parametrize("T,chunk,temperature", [(37, 8, 1.2), (5, 16, 0.7), (9, 1, 1.0)])
def test_chunked_equals_unchunked(T, chunk, temperature):
    h, w, tok = _inputs(2, T, 16, 50)

    @jax.jit
    def both_ways(h, w, tok):
        kw = dict(temperature=temperature, chunk_size=chunk)
        lp, ent = L.logprobs_and_entropy_from_hidden(h, w, tok, **kw)
        return ((lp, ent, L.token_logprobs_from_hidden(h, w, tok, **kw),
                 L.entropy_from_hidden(h, w, **kw)), _unchunked(h, w, tok, temperature))

    (lp, ent, lp_only, ent_only), (ref_lp, ref_ent) = both_ways(h, w, tok)
    for got, want in ((lp, ref_lp), (ent, ref_ent), (lp_only, ref_lp), (ent_only, ref_ent)):
        assert got.shape == (2, T) and got.dtype == jnp.float32
        # rtol: a chunk's matmul has other shapes than the whole one, so another summation
        # order on some CPUs; at logprobs near -10 one float32 ulp is ~1e-6 (CI saw 2e-6).
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_chunked_bf16_inputs_match_unchunked():
    h, w, tok = _inputs(2, 24, 32, 64, dtype=jnp.bfloat16)
    ref_lp, ref_ent = jax.jit(_unchunked, static_argnums=3)(h, w, tok, 1.0)
    lp, ent = jax.jit(lambda *a: L.logprobs_and_entropy_from_hidden(*a, chunk_size=8))(h, w, tok)
    np.testing.assert_allclose(lp, ref_lp, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(ent, ref_ent, rtol=2e-6, atol=1e-6)


def test_chunked_gradients_match_unchunked():
    h, w, tok = _inputs(2, 21, 16, 40, seed=1)
    c = jax.random.normal(jax.random.key(7), (2, 21))

    def objective(fn):
        def f(h, w):
            lp, ent = fn(h, w)
            return jnp.sum(c * lp) + 0.3 * jnp.sum(ent)
        return jax.jit(jax.grad(f, argnums=(0, 1)))

    g_ref = objective(lambda h, w: _unchunked(h, w, tok, 1.1))(h, w)
    g_chk = objective(lambda h, w: L.logprobs_and_entropy_from_hidden(
        h, w, tok, temperature=1.1, chunk_size=4))(h, w)
    for a, b in zip(g_chk, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_chunk_size():
    h, w, tok = _inputs(1, 4, 4, 8)
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="chunk_size"):
            L.token_logprobs_from_hidden(h, w, tok, chunk_size=bad)


# ------------------------------------------------------------------------- memory

D, V, CHUNK = 16, 8192, 32


def _temp_bytes(fn, T, B=1):
    args = (jax.ShapeDtypeStruct((B, T, D), jnp.float32),
            jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((B, T), jnp.int32))
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _chunked(h, w, t):
    return L.logprobs_and_entropy_from_hidden(h, w, t, chunk_size=CHUNK)


def _full(h, w, t):
    return _unchunked(h, w, t, 1.0)


def _grad_of(fn):
    def f(h, w, t):
        lp, ent = fn(h, w, t)
        return jnp.sum(lp) + jnp.sum(ent)
    return jax.grad(f, argnums=(0, 1))


@pytest.mark.parametrize("transform", [lambda f: f, _grad_of], ids=["forward", "backward"])
def test_chunked_temp_memory_does_not_grow_with_T(transform):
    T1, T2 = 256, 1024
    extra_logits = (T2 - T1) * V * 4  # bytes of the additional [T, V] float32 logits
    full = [_temp_bytes(transform(_full), T) for T in (T1, T2)]
    chunked = [_temp_bytes(transform(_chunked), T) for T in (T1, T2)]
    # The unchunked function materializes the whole [T, V] logits: its temporaries grow by
    # at least the size of the extra logits.
    assert full[1] - full[0] >= extra_logits
    # The chunked one only grows by O(T * D) (the re-laid-out hidden states and the [T]
    # outputs): less than 1% of the extra logits; at T = 1024 its whole temporary footprint
    # (a few [C, V] chunk buffers) is a small fraction of the unchunked one's.
    assert chunked[1] - chunked[0] < 0.01 * extra_logits
    assert chunked[1] < 0.2 * full[1]
