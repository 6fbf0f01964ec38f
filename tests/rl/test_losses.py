"""Hand-derived golden values for prorl_jax.losses (the arithmetic is in the comments)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax import losses as L
from prorl_jax.errors import ConfigError, DataError, UserError

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=tol, atol=tol)


# ------------------------------------------------------------------------ advantages

def test_grpo_advantages_golden():
    # group 0 = [0, 0, 3]: mean 1, deviations (-1, -1, 2),
    #   unbiased var = (1 + 1 + 4) / (3 - 1) = 3, std = sqrt(3).
    # group 1 = [1, 1, 1]: all equal -> deviations 0 -> advantages exactly 0.
    adv = L.grpo_advantages(jnp.array([0.0, 0.0, 3.0, 1.0, 1.0, 1.0]), 3)
    s = math.sqrt(3.0) + 1e-6
    close(adv, [-1 / s, -1 / s, 2 / s, 0.0, 0.0, 0.0])
    assert np.all(np.asarray(adv[3:]) == 0.0)


def test_grpo_advantages_dr_grpo_and_eps():
    # norm_by_std=False: only the mean is removed (Dr. GRPO): (0,0,3) - 1 = (-1,-1,2).
    adv = L.grpo_advantages(jnp.array([0.0, 0.0, 3.0]), 3, norm_by_std=False)
    close(adv, [-1.0, -1.0, 2.0])
    # group [0, 1]: mean 0.5, unbiased std = sqrt((0.25 + 0.25) / 1) = sqrt(0.5);
    # eps = 0.5 -> 0.5 / (0.70710678 + 0.5) = 0.41421356.
    adv = L.grpo_advantages(jnp.array([0.0, 1.0]), 2, eps=0.5)
    close(adv, [-0.5 / (math.sqrt(0.5) + 0.5), 0.5 / (math.sqrt(0.5) + 0.5)])


def test_group_estimators_reject_bad_groups():
    for fn in (L.grpo_advantages, L.rloo_advantages, L.group_keep_mask):
        with pytest.raises(ConfigError, match="group_size"):
            fn(jnp.zeros(4), 1)
        with pytest.raises(DataError, match="multiple of group_size"):
            fn(jnp.zeros(5), 2)
    with pytest.raises(ConfigError):
        L.reinforce_pp_baseline_advantages(jnp.zeros(4), 1, jnp.ones((4, 2)))
    assert issubclass(ConfigError, UserError) and issubclass(DataError, UserError)


def test_rloo_advantages_golden():
    # [0, 0, 3]: each minus the mean of the other two: 0 - 1.5, 0 - 1.5, 3 - 0.
    close(L.rloo_advantages(jnp.array([0.0, 0.0, 3.0]), 3), [-1.5, -1.5, 3.0])
    # [1, 2] with n = 2: 1 - 2 = -1, 2 - 1 = 1; equal group [5, 5] -> 0, 0.
    close(L.rloo_advantages(jnp.array([1.0, 2.0, 5.0, 5.0]), 2), [-1.0, 1.0, 0.0, 0.0])


def test_reinforce_pp_baseline_golden():
    # groups (1, 0) and (1, 1) -> scores r - group mean = 0.5, -0.5, 0, 0.
    # valid tokens: row0 2 tokens, row1 1, row2 1, row3 none -> token values
    #   (0.5, 0.5, -0.5, 0); mean = 0.5 / 4 = 0.125; deviations .375, .375, -.625, -.125;
    #   sum of squares = .140625 * 2 + .390625 + .015625 = .6875; unbiased var = .6875 / 3.
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    adv = L.reinforce_pp_baseline_advantages(jnp.array([1.0, 0.0, 1.0, 1.0]), 2, mask)
    k = 1.0 / math.sqrt(0.6875 / 3 + 1e-8)
    close(adv, [[0.375 * k, 0.375 * k, 0], [-0.625 * k, 0, 0], [0, -0.125 * k, 0], [0, 0, 0]])


def test_group_keep_mask_golden():
    # groups (1,1,1) all equal -> drop; (0,1,0) mixed -> keep; (0,0,0) -> drop.
    keep = L.group_keep_mask(jnp.array([1.0, 1, 1, 0, 1, 0, 0, 0, 0]), 3)
    assert keep.dtype == jnp.bool_
    np.testing.assert_array_equal(keep, [False, True, False])


# ---------------------------------------------------------------- reward shaping

def test_overlong_penalty_golden():
    # max_len 10, buffer 4 -> ramp starts after 10 - 4 = 6 tokens:
    # 5 -> 0; 6 -> 0; 8 -> -(8 - 6) / 4 = -0.5; 10 -> -1; 12 (beyond max) -> -1.
    close(L.overlong_penalty(jnp.array([5, 6, 8, 10, 12]), 10, 4), [0, 0, -0.5, -1, -1])
    close(L.overlong_penalty(jnp.array([7, 9]), 10, 4, factor=2.0), [-0.5, -1.5])
    with pytest.raises(ConfigError, match="buffer_len"):
        L.overlong_penalty(jnp.array([1]), 10, 0)
    with pytest.raises(ConfigError, match="buffer_len"):
        L.overlong_penalty(jnp.array([1]), 10, 11)


def test_nontermination_penalty_golden():
    r = jnp.array([1.0, 0.5, 0.25])
    fin = jnp.array([True, False, True])
    close(L.nontermination_penalty(r, fin), [1.0, 0.0, 0.25])
    close(L.nontermination_penalty(r, fin, reward=-1.0), [1.0, -1.0, 0.25])


# ------------------------------------------------------------- logprobs / entropy

def test_token_logprobs_golden():
    # logits (0, ln 3) -> softmax (1/4, 3/4).
    logits = jnp.array([[[0.0, LN3], [0.0, LN3]]])
    tokens = jnp.array([[1, 0]])
    close(L.token_logprobs(logits, tokens), [[math.log(0.75), math.log(0.25)]])
    # shifting all logits leaves the distribution unchanged (float32 spacing near 100 is
    # 7.6e-6, so the shifted input itself is only that exact).
    close(L.token_logprobs(logits + 100.0, tokens), [[math.log(0.75), math.log(0.25)]],
          tol=1e-5)
    # temperature 2: z = (0, ln3 / 2) -> p1 = sqrt3 / (1 + sqrt3).
    s3 = math.sqrt(3.0)
    close(L.token_logprobs(logits, tokens, temperature=2.0),
          [[math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))]])


def test_entropy_golden():
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) = ln 4 - (3/4) ln 3.
    logits = jnp.array([[[0.0, LN3]]])
    close(L.entropy_from_logits(logits), [[math.log(4.0) - 0.75 * LN3]])
    # temperature 1/2: z = (0, 2 ln 3) -> p = (1/10, 9/10).
    close(L.entropy_from_logits(logits, temperature=0.5),
          [[-(0.1 * math.log(0.1) + 0.9 * math.log(0.9))]])
    # uniform over 4 -> ln 4; a near one-hot distribution -> ~0.
    close(L.entropy_from_logits(jnp.zeros((1, 1, 4))), [[math.log(4.0)]])
    close(L.entropy_from_logits(jnp.array([[[0.0, -1e4, -1e4]]])), [[0.0]])


def test_bf16_logits_are_computed_in_float32():
    logits = jnp.array([[[0.0, LN3]]], jnp.bfloat16)
    out = L.token_logprobs(logits, jnp.array([[1]]))
    assert out.dtype == jnp.float32
    # ln 3 = 1.0986; bf16 spacing in [1, 2) is 2^-7 = 0.0078125, so bf16(ln 3) =
    # 141 * 2^-7 = 1.1015625 -> log p1 = -log(1 + e^-1.1015625), evaluated in float32.
    close(out, [[-math.log1p(math.exp(-1.1015625))]], tol=1e-6)


# --------------------------------------------------------------------- policy loss

# Two responses with 4 tokens each; advantages per response (+1 and -1), old logp = 0 so
# the ratio is r = exp(logp).
RATIOS = np.array([[1.5, 1.2, 0.5, 4.0],   # A = +1
                   [0.5, 2.0, 4.0, 1.0]])  # A = -1
ADV = jnp.array([1.0, -1.0])
MASK = jnp.ones((2, 4))
# Per-token losses with clip (0.8, 1.4) and clip_c = 3:
#  A=+1: r=1.5: max(-1.5, -1.4) = -1.4 (clipped)   r=1.2: -1.2
#        r=0.5: max(-0.5, -0.8) = -0.5              r=4.0: max(-4, -1.4) = -1.4 (clipped; no
#        dual clip for A > 0, which would have given min(-1.4, -3) = -3)
#  A=-1: r=0.5: max(0.5, 0.8) = 0.8 (clipped)       r=2.0: max(2, 1.4) = 2, min(2, 3) = 2
#        r=4.0: max(4, 1.4) = 4 -> dual clip min(4, 3) = 3   r=1.0: 1
# token-mean = (-1.4 - 1.2 - 0.5 - 1.4 + 0.8 + 2 + 3 + 1) / 8 = 2.3 / 8 = 0.2875
PG_LOSS = 2.3 / 8
# d loss / d logp = (-A r) / 8 on unclipped tokens (dr/dlogp = r), 0 on clipped ones.
PG_GRAD = np.array([[0.0, -1.2, -0.5, 0.0], [0.0, 2.0, 0.0, 1.0]]) / 8


def _pl(logp, **kw):
    return L.policy_loss(logp, jnp.zeros_like(logp), ADV, MASK, **kw)


def test_policy_loss_golden_values_metrics_and_gradients():
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    loss, m = _pl(logp)
    close(loss, PG_LOSS)
    # clipped branch taken (l2 > l1): (A=+1, r=1.5), (A=+1, r=4), (A=-1, r=0.5) -> 3/8.
    close(m["pg_clipfrac"], 3 / 8)
    # dual clip active: only (A=-1, r=4) -> 1/8.
    close(m["pg_clipfrac_lower"], 1 / 8)
    # approx_kl = mean(old - new) = -ln(1.5*1.2*0.5*4*0.5*2*4*1) / 8 = -ln(14.4) / 8.
    close(m["approx_kl"], -math.log(14.4) / 8)
    # (1.5 + 1.2 + 0.5 + 4 + 0.5 + 2 + 4 + 1) / 8 = 14.7 / 8
    close(m["ratio_mean"], 14.7 / 8)
    close(m["ratio_max"], 4.0)
    grad = jax.grad(lambda lp: _pl(lp)[0])(logp)
    close(grad, PG_GRAD)
    # clipped tokens get exactly zero gradient.
    assert np.all(np.asarray(grad)[PG_GRAD == 0] == 0.0)


def test_policy_loss_per_token_advantages_equal_broadcast():
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    per_token = jnp.broadcast_to(ADV[:, None], (2, 4))
    a, _ = L.policy_loss(logp, jnp.zeros_like(logp), per_token, MASK)
    close(a, PG_LOSS)


def test_dual_clip_only_on_negative_advantages():
    one = jnp.ones((1, 1))
    # A = +1, r = 10: max(-10, -1.4) = -1.4 whatever clip_c is (dual clip would give -3).
    for c in (3.0, 1.5, None):
        close(L.policy_loss(jnp.log(10.0) * one, 0 * one, jnp.array([1.0]), one, clip_c=c)[0],
              -1.4)
    # A = -1, r = 10: max(10, 1.4) = 10, capped at clip_c: 3 / 1.5 / (off) 10.
    for c, want in ((3.0, 3.0), (1.5, 1.5), (None, 10.0)):
        close(L.policy_loss(jnp.log(10.0) * one, 0 * one, jnp.array([-1.0]), one, clip_c=c)[0],
              want, tol=1e-5)


def test_policy_loss_without_dual_clip_golden():
    # clip_c=None: token (A=-1, r=4) contributes 4 instead of 3 -> (2.3 + 1) / 8,
    # and its gradient is -A r / 8 = 4 / 8.
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    loss, m = _pl(logp, clip_c=None)
    close(loss, 3.3 / 8)
    close(m["pg_clipfrac_lower"], 0.0)
    grad = jax.grad(lambda lp: _pl(lp, clip_c=None)[0])(logp)
    close(grad, PG_GRAD + np.array([[0, 0, 0, 0], [0, 0, 0.5, 0]]))


def test_policy_loss_log_ratio_clamp():
    # log-ratio 50 is clamped to 20 before exp: ratio_max = e^20, and approx_kl = -20.
    one = jnp.ones((1, 1))
    _, m = L.policy_loss(50.0 * one, 0 * one, jnp.array([1.0]), one)
    close(m["ratio_max"], math.exp(20.0), tol=1e-5)
    close(m["approx_kl"], -20.0)


def test_policy_loss_rejects_bad_clip_c():
    one = jnp.ones((1, 1))
    for c in (1.0, 0.5):
        with pytest.raises(ConfigError, match="clip_c"):
            L.policy_loss(one, one, jnp.array([1.0]), one, clip_c=c)


def test_policy_loss_masked_values_change_nothing():
    # a third column of garbage under the mask: same loss, metrics, zero grad there.
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    mask = jnp.concatenate([MASK, jnp.zeros((2, 1))], axis=1)
    garbage = jnp.array([[jnp.nan], [jnp.inf]])

    def f(lp, old):
        return L.policy_loss(lp, old, ADV, mask)

    lp3 = jnp.concatenate([logp, garbage], axis=1)
    old3 = jnp.concatenate([jnp.zeros((2, 4)), -garbage], axis=1)
    loss, m = f(lp3, old3)
    close(loss, PG_LOSS)
    close(m["pg_clipfrac"], 3 / 8)
    close(m["ratio_max"], 4.0)
    grad = jax.grad(lambda lp: f(lp, old3)[0])(lp3)
    close(grad, np.concatenate([PG_GRAD, np.zeros((2, 1))], axis=1))


# ---------------------------------------------------------------------------- KL

def test_kl_penalty_golden():
    # logp = ln 0.5, ref = ln 0.25: x = logp - ref = ln 2.
    lp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    close(L.kl_penalty(lp, ref, "k1"), [[LN2]])
    close(L.kl_penalty(lp, ref, "abs"), [[LN2]])
    close(L.kl_penalty(ref, lp, "abs"), [[LN2]])
    close(L.kl_penalty(ref, lp, "k1"), [[-LN2]])
    close(L.kl_penalty(lp, ref, "k2"), [[0.5 * LN2**2]])
    # k3: d = ref - logp = -ln 2 -> e^-ln2 + ln2 - 1 = ln2 - 0.5.
    close(L.kl_penalty(lp, ref, "k3"), [[LN2 - 0.5]])
    # the other way round, d = ln 2 -> 2 - ln2 - 1 = 1 - ln2.
    close(L.kl_penalty(ref, lp, "k3"), [[1 - LN2]])
    for alias, canon in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        close(L.kl_penalty(lp, ref, alias), L.kl_penalty(lp, ref, canon))
    # default kind is low_var_kl.
    close(L.kl_penalty(lp, ref), [[LN2 - 0.5]])


def test_k3_nonnegative_zero_at_equal_and_clamped():
    lp = jnp.array([[-3.0, -0.1, -7.0, -2.0]])
    for kind in ("k1", "abs", "k2", "k3", "k1+", "k3+"):
        np.testing.assert_array_equal(L.kl_penalty(lp, lp, kind), np.zeros((1, 4)))
    ref = jnp.array([[-0.5, -4.0, -0.01, -2.5]])
    assert np.all(np.asarray(L.kl_penalty(lp, ref, "k3")) >= 0.0)
    # x = +30: d = -30 -> clamp -20 -> e^-20 + 20 - 1 = 19.000000002 -> clamp 10.
    # x = -30: d = 30 -> clamp 20 -> e^20 - 21 -> clamp 10.
    close(L.kl_penalty(jnp.array([[30.0, -30.0]]), jnp.zeros((1, 2)), "k3"), [[10.0, 10.0]])


def test_straight_through_kl_value_and_gradient():
    lp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))

    def g(kind):
        return jax.grad(lambda x: jnp.sum(L.kl_penalty(x, ref, kind)))(lp)

    # k3 gradient: d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - e^(ref-logp) = 1 - 0.5.
    close(g("k3"), [[0.5]])
    # k1 gradient is 1; k2 gradient is logp - ref = ln 2.
    close(g("k1"), [[1.0]])
    close(g("k2"), [[LN2]])
    # "+" variants: value of the named estimator, gradient of k2.
    close(L.kl_penalty(lp, ref, "k3+"), [[LN2 - 0.5]])
    close(L.kl_penalty(lp, ref, "k1+"), [[LN2]])
    close(g("k3+"), [[LN2]])
    close(g("k1+"), [[LN2]])
    close(g("low_var_kl+"), [[LN2]])
    # the reference is a constant.
    gref = jax.grad(lambda r: jnp.sum(L.kl_penalty(lp, r, "k3")))(ref)
    np.testing.assert_array_equal(gref, [[0.0]])


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="KL estimator 'full'"):
        L.kl_penalty(jnp.zeros((1, 1)), jnp.zeros((1, 1)), "full")


# -------------------------------------------------------------------- aggregation

def test_aggregate_modes_on_ragged_lengths():
    # row lengths 3, 1, 0 (T = 3); the masked 99s must not count.
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [99.0, 99.0, 99.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    got = {mode: float(L.aggregate(values, mask, mode)) for mode in L.AGG_MODES}
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    close(got["token-mean"], 2.5)
    # seq sums 6 and 4 (row 3 is empty and left out): (6 + 4) / 2 = 5
    close(got["seq-mean-token-sum"], 5.0)
    # seq means 6/3 = 2 and 4/1 = 4: (2 + 4) / 2 = 3
    close(got["seq-mean-token-mean"], 3.0)
    # seq sums over T = 3: (6/3 + 4/3) / 2 = 5/3
    close(got["seq-mean-token-sum-norm"], 5.0 / 3.0)
    assert len(set(np.round(list(got.values()), 6))) == 4
    # explicit normalizer 10: (0.6 + 0.4) / 2 = 0.5
    close(L.aggregate(values, mask, "seq-mean-token-sum-norm", normalizer=10.0), 0.5)


def test_aggregate_empty_mask_and_bad_mode():
    for mode in L.AGG_MODES:
        close(L.aggregate(jnp.full((2, 3), jnp.nan), jnp.zeros((2, 3)), mode), 0.0)
    with pytest.raises(ConfigError, match="aggregation mode 'mean'"):
        L.aggregate(jnp.zeros((1, 1)), jnp.ones((1, 1)), "mean")
    with pytest.raises(ConfigError, match="normalizer"):
        L.aggregate(jnp.zeros((1, 1)), jnp.ones((1, 1)), "seq-mean-token-sum-norm", 0)


def test_aggregate_gradients_golden():
    # seq-mean-token-mean with lengths 2 and 1: d/dv = 1 / (n_b * 2 rows) -> 1/4, 1/4, 1/2.
    mask = jnp.array([[1, 1], [1, 0]])
    g = jax.grad(lambda v: L.aggregate(v, mask, "seq-mean-token-mean"))(jnp.ones((2, 2)))
    close(g, [[0.25, 0.25], [0.5, 0.0]])
    # token-mean: every valid token 1/3.
    g = jax.grad(lambda v: L.aggregate(v, mask, "token-mean"))(jnp.ones((2, 2)))
    close(g, [[1 / 3, 1 / 3], [1 / 3, 0.0]])


def test_masked_mean_golden():
    x = jnp.array([[1.0, 2.0], [3.0, jnp.nan]])
    m = jnp.array([[1, 1], [1, 0]])
    close(L.masked_mean(x, m), 2.0)  # (1 + 2 + 3) / 3
    close(L.masked_mean(x, m, axis=-1), [1.5, 3.0])
    close(L.masked_mean(x, jnp.zeros((2, 2))), 0.0)


# -------------------------------------------------------------------- grpo_loss

def test_grpo_loss_composes_golden():
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    ref = logp - LN2  # every token: d = ref - logp = -ln 2 -> k3 = ln2 - 0.5
    ent = jnp.full((2, 4), 2.0)

    def f(lp):
        return L.grpo_loss(lp, jnp.zeros_like(lp), ref, ADV, MASK, kl_coef=0.1,
                           entropy=ent, entropy_coef=0.01)

    loss, m = f(logp)
    # 0.2875 + 0.1 * (ln2 - 0.5) - 0.01 * 2
    close(loss, PG_LOSS + 0.1 * (LN2 - 0.5) - 0.02)
    close(m["pg_loss"], PG_LOSS)
    close(m["kl"], LN2 - 0.5)
    close(m["entropy"], 2.0)
    close(m["loss"], loss)
    close(m["pg_clipfrac"], 3 / 8)
    close(m["pg_clipfrac_lower"], 1 / 8)
    for key in ("approx_kl", "ratio_mean", "ratio_max"):
        assert m[key].shape == ()
    # gradient: policy part + 0.1 * (1 - e^(ref - logp)) / 8 = 0.1 * 0.5 / 8 per token
    # (the entropy here is a constant input).
    close(jax.grad(lambda lp: f(lp)[0])(logp), PG_GRAD + 0.1 * 0.5 / 8)


def test_grpo_loss_optional_terms_and_defaults():
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    loss, m = L.grpo_loss(logp, jnp.zeros_like(logp), None, ADV, MASK)
    close(loss, PG_LOSS)
    assert "kl" not in m and "entropy" not in m
    # defaults: k3 with beta 1e-4, no entropy bonus.
    loss, m = L.grpo_loss(logp, jnp.zeros_like(logp), logp - LN2, ADV, MASK,
                          entropy=jnp.ones((2, 4)))
    close(loss, PG_LOSS + 1e-4 * (LN2 - 0.5))
    close(m["entropy"], 1.0)
    # entropy gradient: -entropy_coef / 8 per valid token under token-mean.
    ge = jax.grad(lambda e: L.grpo_loss(logp, jnp.zeros_like(logp), None, ADV, MASK,
                                        entropy=e, entropy_coef=0.5)[0])(jnp.ones((2, 4)))
    close(ge, np.full((2, 4), -0.5 / 8))


def test_jit_and_vmap():
    logp = jnp.log(jnp.asarray(RATIOS, jnp.float32))
    old = jnp.zeros_like(logp)
    f = jax.jit(lambda *a: L.grpo_loss(*a, agg="seq-mean-token-mean"))
    loss, _ = f(logp, old, logp, ADV, MASK)
    close(loss, L.grpo_loss(logp, old, logp, ADV, MASK, agg="seq-mean-token-mean")[0])
    # vmap over a leading axis of two identical batches.
    stack = lambda x: jnp.stack([x, x])  # noqa: E731
    losses, _ = jax.vmap(lambda lp, o, a, m: L.policy_loss(lp, o, a, m))(
        stack(logp), stack(old), stack(ADV), stack(MASK))
    close(losses, [PG_LOSS, PG_LOSS])
    # vmap over rows: each row is then a [T] sequence with a scalar advantage.
    per_row, _ = jax.vmap(lambda lp, o, a, m: L.policy_loss(lp, o, a, m))(logp, old, ADV, MASK)
    close(per_row, [-4.5 / 4, 6.8 / 4])


def test_dual_clip_matches_trl_two_sided_delta():
    # TRL's two-sided GRPO: loss = -min(min(r, delta) A, clip(r, 1-el, 1+eh) A). For
    # delta > 1 + eh that is our dual clip with clip_c = delta (docs/losses.md mapping).
    rng = np.random.default_rng(0)
    r = np.exp(rng.normal(0, 1.5, (3, 50)))
    a = rng.normal(0, 1, (3, 50))
    trl = -np.minimum(np.minimum(r, 4.0) * a, np.clip(r, 0.8, 1.4) * a)
    lp = jnp.asarray(np.log(r), jnp.float32)
    ours = L.policy_loss(lp, jnp.zeros_like(lp), jnp.asarray(a, jnp.float32),
                         jnp.ones((3, 50)), clip_c=4.0)[0]
    close(ours, trl.mean(), tol=1e-5)


def test_prorl_jax_losses_reexports_the_loss_library():
    import importlib
    import sys

    from prorl_jax.rl import losses as lib

    mod = importlib.import_module("prorl_jax.losses")
    assert sys.modules["prorl_jax.losses"] is mod and mod is not lib  # a plain module
    assert mod.__all__ == lib.__all__
    assert all(getattr(mod, name) is getattr(lib, name) for name in lib.__all__)
