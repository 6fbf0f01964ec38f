"""Property tests (hypothesis) for prorl_jax.losses over random shapes, masks and values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prorl_jax import losses as L

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)

# A few distinct shapes keep XLA's per-shape compile cache warm across examples.
shapes = st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from([1, 3, 6]))
seeds = st.integers(0, 2**31 - 1)
aggs = st.sampled_from(L.AGG_MODES)
kl_kinds = st.sampled_from(["k1", "abs", "k2", "k3", "k1+", "k3+"])


def _batch(shape, seed, spread=3.0):
    """Random per-token inputs; log-ratios up to +-2*spread exercise the clamps."""
    rng = np.random.default_rng(seed)
    B, T = shape
    f = lambda *s: jnp.asarray(rng.normal(0, spread, s), jnp.float32)  # noqa: E731
    mask = jnp.asarray(rng.random((B, T)) < 0.7)
    return dict(logprobs=-jnp.abs(f(B, T)), old=-jnp.abs(f(B, T)), ref=-jnp.abs(f(B, T)),
                adv=f(B, T), entropy=jnp.abs(f(B, T)), mask=mask, rng=rng)


@functools.partial(jax.jit, static_argnames=("agg", "kl_kind"))
def _loss_and_grads(logprobs, old, ref, adv, entropy, mask, agg, kl_kind):
    def f(lp, ent):
        return L.grpo_loss(lp, old, ref, adv, mask, kl_coef=0.1, kl_kind=kl_kind,
                           entropy=ent, entropy_coef=0.01, agg=agg)

    (loss, metrics), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        logprobs, entropy)
    return loss, metrics, grads


def _args(b):
    return (b["logprobs"], b["old"], b["ref"], b["adv"], b["entropy"], b["mask"])


@SETTINGS
@given(shapes, seeds, aggs, kl_kinds, st.sampled_from([0.5, 3.0, 15.0]))
def test_finite_outputs(shape, seed, agg, kl_kind, spread):
    b = _batch(shape, seed, spread)
    loss, metrics, grads = _loss_and_grads(*_args(b), agg=agg, kl_kind=kl_kind)
    for x in (loss, *metrics.values(), *grads):
        assert np.all(np.isfinite(np.asarray(x)))
    # metrics that are fractions stay in [0, 1]
    for key in ("pg_clipfrac", "pg_clipfrac_lower"):
        assert 0.0 <= float(metrics[key]) <= 1.0


@SETTINGS
@given(shapes, seeds, aggs, kl_kinds, st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0]))
def test_masked_values_never_change_loss_metrics_or_grads(shape, seed, agg, kl_kind, junk):
    b = _batch(shape, seed)
    inv = ~b["mask"]
    noise = jnp.asarray(b["rng"].normal(0, 50, shape), jnp.float32)
    garbage = jnp.where(b["rng"].random(shape) < 0.5, jnp.float32(junk), noise)
    dirty = [jnp.where(inv, garbage, x) for x in _args(b)[:5]]
    clean_out = _loss_and_grads(*_args(b), agg=agg, kl_kind=kl_kind)
    dirty_out = _loss_and_grads(*dirty, b["mask"], agg=agg, kl_kind=kl_kind)
    jax.tree.map(np.testing.assert_array_equal, clean_out, dirty_out)
    # and the gradient under the mask is exactly zero
    for g in dirty_out[2]:
        assert np.all(np.asarray(g)[np.asarray(inv)] == 0.0)


@SETTINGS
@given(shapes, seeds, aggs)
def test_aggregate_of_constant_is_that_constant(shape, seed, agg):
    # every mode except the sum-based ones is an average: a constant c aggregates to c.
    b = _batch(shape, seed)
    c = float(b["rng"].normal())
    got = float(L.aggregate(jnp.full(shape, c), b["mask"], agg))
    has_any = bool(np.any(np.asarray(b["mask"])))
    if not has_any:
        assert got == 0.0
    elif agg in ("token-mean", "seq-mean-token-mean"):
        np.testing.assert_allclose(got, c, rtol=1e-5, atol=1e-6)
    else:
        # token sums: mean over non-empty rows of c * n_b (divided by T for -norm)
        n = np.asarray(b["mask"]).sum(-1)
        want = c * n[n > 0].mean() / (shape[1] if agg.endswith("norm") else 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnums=1)
def _group_outputs(r, n, mask):
    return (L.group_keep_mask(r, n), L.grpo_advantages(r, n),
            L.grpo_advantages(r, n, norm_by_std=False), L.rloo_advantages(r, n),
            L.reinforce_pp_baseline_advantages(r, n, mask))


@SETTINGS
@given(st.integers(1, 5), st.integers(2, 6), seeds)
def test_group_advantages_properties(num_groups, n, seed):
    rng = np.random.default_rng(seed)
    # a mix of binary-reward groups (often all-equal) and continuous ones
    r = np.where(rng.random(num_groups * n) < 0.5, rng.integers(0, 2, num_groups * n),
                 rng.random(num_groups * n)).astype(np.float32)
    r = jnp.asarray(r)
    mask = jnp.asarray(rng.random((num_groups * n, 5)) < 0.6)
    keep, grpo, dr_grpo, rloo, rfpp = _group_outputs(r, n, mask)
    grouped = np.asarray(r).reshape(num_groups, n)
    equal = np.all(grouped == grouped[:, :1], axis=1)
    np.testing.assert_array_equal(keep, ~equal)
    for adv in (grpo, dr_grpo, rloo):
        a = np.asarray(adv).reshape(num_groups, n)
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a.sum(1), 0.0, atol=1e-5)  # centered per group
        assert np.all(a[equal] == 0.0)  # no signal from all-equal groups
    # normalized GRPO advantages have unbiased std std/(std+1e-6) ~ 1 in non-constant groups
    a = np.asarray(grpo).reshape(num_groups, n)
    ok = grouped.std(1, ddof=1) > 1e-3
    np.testing.assert_allclose(a[ok].std(1, ddof=1), 1.0, rtol=1e-3)
    # REINFORCE++-baseline: zero under the mask, zero mean / unit unbiased variance over
    # the valid tokens (when at least two distinct token values exist).
    x = np.asarray(rfpp)
    m = np.asarray(mask)
    assert np.all(x[~m] == 0.0) and np.all(np.isfinite(x))
    vals = x[m]
    if vals.size >= 2 and np.ptp(vals) > 1e-3:
        np.testing.assert_allclose(vals.mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(vals.var(ddof=1), 1.0, rtol=1e-3)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.integers(2, 6), seeds)
def test_k1_and_k3_means_approach_true_kl(V, seed):
    # tokens sampled from pi; k1 and k3 are both unbiased estimators of KL(pi || ref):
    # E[logp - logq] = KL and E[q/p - 1 - log(q/p)] = 1 - 1 + KL.
    # Logits in [-0.6, 0.6] keep |log q/p| <= 2.4, so k3 <= e^2.4 - 3.4 = 7.6 stays below
    # verl's +-10 clamp (which biases k3 low when a rare token has q/p ~ 37).
    rng = np.random.default_rng(seed)
    logits_p = jnp.asarray(rng.uniform(-0.6, 0.6, V), jnp.float32)
    logits_q = jnp.asarray(rng.uniform(-0.6, 0.6, V), jnp.float32)
    logp_all, logq_all = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    true_kl = float(jnp.sum(jnp.exp(logp_all) * (logp_all - logq_all)))
    N = 100_000
    x = jax.random.categorical(jax.random.key(seed), logits_p, shape=(N,))
    lp, lq = logp_all[x][None], logq_all[x][None]  # [1, N]
    for kind in ("k1", "k3"):
        est = np.asarray(L.kl_penalty(lp, lq, kind), np.float64)
        sem = est.std() / np.sqrt(N)
        # 5 standard errors (a false alarm ~1e-6 per check) plus float32 rounding.
        assert abs(est.mean() - true_kl) < 5 * sem + 1e-5, (kind, est.mean(), true_kl)
        # via aggregate (token-mean over an all-valid mask) the same number comes out
        np.testing.assert_allclose(float(L.aggregate(jnp.asarray(est, jnp.float32),
                                                     jnp.ones((1, N)))), est.mean(), rtol=1e-4)
