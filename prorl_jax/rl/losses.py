"""The functional GRPO / ProRL loss pieces: advantages, clipped policy loss, KL, aggregation.

Every function is pure and jit / grad / vmap friendly; none calls the model. Conventions
follow verl (which ProRL was trained with): unbiased group std with eps 1e-6, log-ratio
clamped to +-20 before exp, dual clip on negative advantages, verl's loss aggregation modes
and KL estimators. Formulas are in docs/losses.md.

Shapes: B sequences, T response tokens. `mask` is [B, T] (bool or 0/1), 1 = a real response
token. Values at masked positions never influence a loss, a metric or a gradient, even when
they are inf or nan: every per-token input is replaced by 0 under the mask before any
arithmetic, so no nan can leak in through a `0 * nan` in the backward pass either.
"""

import jax
import jax.numpy as jnp

from prorl_jax.errors import ConfigError, DataError
from prorl_jax.rl.logprobs import (
    DEFAULT_CHUNK_SIZE,
    entropy_from_hidden,
    entropy_from_logits,
    logprobs_and_entropy_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)
from prorl_jax.rl.loss_names import AGG_MODES, KL_ALIASES, KL_KINDS, SEQ_MEAN_MODES

__all__ = [
    "AGG_MODES",
    "DEFAULT_CHUNK_SIZE",
    "KL_KINDS",
    "SEQ_MEAN_MODES",
    "aggregate",
    "entropy_from_hidden",
    "entropy_from_logits",
    "grpo_advantages",
    "grpo_loss",
    "group_keep_mask",
    "kl_penalty",
    "logprob_mismatch",
    "logprobs_and_entropy_from_hidden",
    "masked_mean",
    "nontermination_penalty",
    "overlong_penalty",
    "policy_loss",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "token_logprobs",
    "tis_weights",
    "token_logprobs_from_hidden",
    "token_weights",
    "weighted_grpo_loss",
]

# verl clamps log-ratios to this range before exp so one wild token cannot overflow.
_LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 value to +-10.
_K3_CLAMP = 10.0
# verl's masked_whiten: (x - mean) * rsqrt(var + 1e-8).
_WHITEN_EPS = 1e-8


# ----------------------------------------------------------------------------- helpers

def _valid(mask):
    return jnp.asarray(mask).astype(bool)


def _zero_masked(x, mask):
    """x with masked positions set to 0, so nan/inf there cannot reach values or grads."""
    x = jnp.asarray(x)
    return jnp.where(_valid(mask), x, jnp.zeros((), x.dtype))


def masked_mean(x, mask, axis=None):
    """Mean of x over the positions where mask is set.

    Args:
        x: array, e.g. [B, T].
        mask: same shape as x (bool or 0/1).
        axis: None for the mean over all valid positions, or the axes to reduce.

    Returns:
        float32 mean (shape of x reduced over `axis`); 0 where no position is valid.
    """
    m = _valid(mask)
    total = jnp.sum(jnp.where(m, x, 0).astype(jnp.float32), axis=axis)
    count = jnp.sum(m, axis=axis).astype(jnp.float32)
    return total / jnp.maximum(count, 1.0)


def _grouped(rewards, group_size, *, min_size=2):
    """rewards [B] -> float32 [G, n] (group-major), after checking group_size."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < min_size:
        raise ConfigError(f"group_size must be an int >= {min_size}, got {group_size!r}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise DataError(f"rewards must have shape [B] with B a multiple of group_size="
                        f"{group_size}, got shape {tuple(rewards.shape)}")
    return rewards.reshape(-1, group_size)


# ------------------------------------------------------------------------- advantages

def grpo_advantages(rewards, group_size, *, norm_by_std=True, eps=1e-6):
    """GRPO outcome advantages: reward minus group mean, over the unbiased group std.

    Args:
        rewards: [B] one scalar per response, group-major: the `group_size` samples of one
            prompt are adjacent (rows g*n .. g*n+n-1 form group g).
        group_size: n >= 2 samples per prompt.
        norm_by_std: divide by (std + eps) as in GRPO; False gives Dr. GRPO's r - mean.
        eps: added to the std (verl: 1e-6).

    Returns:
        float32 [B]; exactly 0 for every member of a group whose rewards are all equal.
    """
    r = _grouped(rewards, group_size)  # [G, n]
    centered = r - jnp.mean(r, axis=1, keepdims=True)
    if norm_by_std:
        centered = centered / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards, group_size):
    """REINFORCE leave-one-out: each reward minus the mean of the other n-1 in its group.

    Args:
        rewards: [B] group-major (see `grpo_advantages`).
        group_size: n >= 2.

    Returns:
        float32 [B]: r_i - (sum_group - r_i) / (n - 1) = n / (n - 1) * (r_i - mean).
    """
    r = _grouped(rewards, group_size)
    n = group_size
    return (n / (n - 1) * (r - jnp.mean(r, axis=1, keepdims=True))).reshape(-1)


def reinforce_pp_baseline_advantages(rewards, group_size, mask):
    """REINFORCE++-baseline (ProRL v2): group mean subtracted, then whitened over tokens.

    The per-response score r_i - mean(group) is broadcast to every valid token of response
    i; those token values are then whitened with the masked mean and unbiased masked
    variance over all valid tokens of the batch (verl's masked_whiten:
    (x - mean) * rsqrt(var + 1e-8)), so long responses weigh more in the statistics.

    Args:
        rewards: [B] group-major.
        group_size: n >= 2.
        mask: [B, T] valid response tokens.

    Returns:
        float32 [B, T], 0 at masked positions.
    """
    r = _grouped(rewards, group_size)
    scores = (r - jnp.mean(r, axis=1, keepdims=True)).reshape(-1)  # [B]
    m = _valid(mask)
    x = jnp.where(m, scores[:, None], 0.0)  # [B, T]
    count = jnp.sum(m).astype(jnp.float32)
    mean = jnp.sum(x) / jnp.maximum(count, 1.0)
    sq = jnp.sum(jnp.where(m, (x - mean) ** 2, 0.0))
    var = sq / jnp.maximum(count - 1.0, 1.0)  # Bessel-corrected, as verl
    return jnp.where(m, (x - mean) * jax.lax.rsqrt(var + _WHITEN_EPS), 0.0)


def group_keep_mask(rewards, group_size):
    """Dynamic sampling: which groups carry a learning signal.

    Args:
        rewards: [B] group-major.
        group_size: n >= 2.

    Returns:
        bool [B // n]: True where the group's rewards are not all equal (a group with
        all-equal rewards has zero advantages and would only dilute the batch).
    """
    r = _grouped(rewards, group_size)
    return jnp.max(r, axis=1) != jnp.min(r, axis=1)


# ---------------------------------------------------------------- reward shaping

def overlong_penalty(lengths, max_len, buffer_len, factor=1.0):
    """DAPO's soft overlong punishment, added to the task reward.

    0 up to max_len - buffer_len tokens, then falling linearly to -factor at max_len, and
    -factor beyond it.

    Args:
        lengths: int [B] response lengths in tokens.
        max_len: maximum response length L_max.
        buffer_len: length of the linear ramp L_cache, 0 < buffer_len <= max_len.
        factor: penalty magnitude at and beyond max_len.

    Returns:
        float32 [B] penalties in [-factor, 0].
    """
    if not 0 < buffer_len <= max_len:
        raise ConfigError(f"overlong buffer_len must satisfy 0 < buffer_len <= max_len "
                          f"({max_len}), got {buffer_len}")
    exceed = jnp.asarray(lengths, jnp.float32) - (max_len - buffer_len)
    return -factor * jnp.clip(exceed / buffer_len, 0.0, 1.0)


def nontermination_penalty(rewards, finished, reward=0.0):
    """Replace the reward of responses that never emitted EOS (truncated at the budget).

    ProRL penalized non-terminated responses in its later runs; ProRL v2 gives them
    reward 0, the default here.

    Args:
        rewards: [B] task rewards.
        finished: bool [B], True where the response ended with a stop token.
        reward: the value a non-terminated response gets.

    Returns:
        float32 [B].
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    return jnp.where(jnp.asarray(finished, bool), rewards, jnp.float32(reward))


# ------------------------------------------------------------------- aggregation

def aggregate(values, mask, mode="token-mean", normalizer=None):
    """Reduce per-token values [B, T] to one scalar, counting only valid tokens.

    Modes (n_b = valid tokens in row b, S = rows with n_b > 0; rows with no valid token are
    left out of every sequence mean):
        token-mean:              sum_b,t v / sum_b n_b
        seq-mean-token-sum:      mean_{b in S} sum_t v
        seq-mean-token-mean:     mean_{b in S} (sum_t v / n_b)
        seq-mean-token-sum-norm: mean_{b in S} (sum_t v) / normalizer   (Dr. GRPO)

    Args:
        values: [B, T] (or [T] under vmap).
        mask: [B, T] valid tokens.
        mode: one of AGG_MODES.
        normalizer: constant for seq-mean-token-sum-norm; default T (the padded length).
            Ignored by the other modes.

    Returns:
        float32 scalar; 0 when nothing is valid.
    """
    if mode not in AGG_MODES:
        raise ConfigError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")
    m = _valid(mask)
    v = _zero_masked(values, m).astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(v) / jnp.maximum(jnp.sum(m).astype(jnp.float32), 1.0)
    n_tok = jnp.sum(m, axis=-1).astype(jnp.float32)  # [B]
    seq_sum = jnp.sum(v, axis=-1)  # [B]
    if mode == "seq-mean-token-sum":
        per_seq = seq_sum
    elif mode == "seq-mean-token-mean":
        per_seq = seq_sum / jnp.maximum(n_tok, 1.0)
    else:
        norm = v.shape[-1] if normalizer is None else normalizer
        if isinstance(norm, int | float) and not norm > 0:
            raise ConfigError(f"aggregation normalizer must be > 0, got {norm}")
        per_seq = seq_sum / norm
    has_tok = n_tok > 0
    return jnp.sum(jnp.where(has_tok, per_seq, 0.0)) / jnp.maximum(
        jnp.sum(has_tok).astype(jnp.float32), 1.0)


def token_weights(lengths, mode="token-mean", normalizer=None):
    """Per-sequence weight w_b of each valid token such that, for every mode,
    `aggregate(v, mask, mode, normalizer) == sum_b w_b * sum_t v[b, t]`.

    A loss written as a weighted token sum can be split over any partition of its
    sequences (packed rows, micro-batches of a token budget) and summed back exactly.

    Args:
        lengths: int [B] valid tokens per sequence (n_b); rows with n_b = 0 get weight 0.
        mode: one of AGG_MODES.
        normalizer: the seq-mean-token-sum-norm constant (the padded length T of the
            layout `aggregate` would see); required for that mode.

    Returns:
        float32 [B].
    """
    if mode not in AGG_MODES:
        raise ConfigError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")
    n = jnp.asarray(lengths, jnp.float32)
    has = n > 0
    if mode == "token-mean":
        w = jnp.ones_like(n) / jnp.maximum(jnp.sum(n), 1.0)
    else:
        seqs = jnp.maximum(jnp.sum(has).astype(jnp.float32), 1.0)
        if mode == "seq-mean-token-sum":
            w = jnp.ones_like(n) / seqs
        elif mode == "seq-mean-token-mean":
            w = 1.0 / (seqs * jnp.maximum(n, 1.0))
        else:
            if normalizer is None or not normalizer > 0:
                raise ConfigError(f"{mode} needs a normalizer > 0, got {normalizer}")
            w = jnp.ones_like(n) / (seqs * normalizer)
    return jnp.where(has, w, 0.0)


# ----------------------------------------------------------------------- policy loss

def _check_clip_c(clip_c):
    if clip_c is None or isinstance(clip_c, jax.Array):
        return
    if not clip_c > 1.0:
        raise ConfigError(f"dual-clip constant clip_c must be > 1 (or None to disable), "
                          f"got {clip_c}")


def _policy_terms(logprobs, old_logprobs, advantages, m, clip_low, clip_high, clip_c,
                  tis=None):
    """Per-token clipped surrogate [B, T] and its clip flags (see `policy_loss`)."""
    # float32 throughout: exp of a bf16 log-ratio would already be off by ~0.4%.
    logprobs = _zero_masked(logprobs, m).astype(jnp.float32)
    old_logprobs = jax.lax.stop_gradient(_zero_masked(old_logprobs, m).astype(jnp.float32))
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.ndim == logprobs.ndim - 1:
        adv = adv[..., None]
    adv = jax.lax.stop_gradient(_zero_masked(jnp.broadcast_to(adv, logprobs.shape), m))

    log_ratio = jnp.clip(logprobs - old_logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = jnp.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    if clip_c is None:
        dual = jnp.zeros_like(clipped)
    else:
        loss_dual = -adv * clip_c
        dual = (adv < 0) & (per_token > loss_dual)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, loss_dual), per_token)
    if tis is not None:
        # After both clips, as verl: the weight rescales the whole per-token term.
        per_token = per_token * jax.lax.stop_gradient(_zero_masked(tis, m).astype(jnp.float32))
    return per_token, clipped, dual, log_ratio, ratio


def tis_weights(old_logprobs, sampler_logprobs, cap, mask=None):
    """Truncated importance-sampling weights of the policy-gradient term.

    The rollout tokens were drawn by the sampler's policy, while the PPO ratio is taken
    against the trainer's old logprobs; where the two differ (bf16 decode vs training
    kernels), w = min(exp(old - sampler), cap) reweights each token's term toward the
    trainer's distribution, truncated so one token cannot dominate (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL"; verl's tis_imp_ratio_cap).

    Args:
        old_logprobs: [B, T] the trainer's log pi_old of the sampled tokens.
        sampler_logprobs: [B, T] the sampler's logprobs of the same tokens.
        cap: truncation > 0.
        mask: [B, T] valid tokens, or None; masked positions get weight 0.

    Returns:
        float32 [B, T] weights (constants: no gradient flows through them).
    """
    d = jnp.asarray(old_logprobs, jnp.float32) - jnp.asarray(sampler_logprobs, jnp.float32)
    if mask is not None:
        d = _zero_masked(d, mask)
    w = jnp.minimum(jnp.exp(jnp.clip(d, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)), cap)
    if mask is not None:
        w = _zero_masked(w, mask)
    return jax.lax.stop_gradient(w)


def logprob_mismatch(sampler_logprobs, trainer_logprobs, mask):
    """Partial sums of the sampler / trainer logprob mismatch over valid tokens.

    d = |logp_sampler - logp_trainer| per token. Sums (not means) so parts of a batch
    combine exactly: mean |d| = abs_sum / count, max |d| = abs_max, and NeMo-RL's
    token_mult_prob_error = exp_sum / count (the mean of exp(|d|), 1 when they agree).

    Args:
        sampler_logprobs, trainer_logprobs: [B, T] logprobs of the same tokens.
        mask: [B, T] valid tokens.

    Returns:
        dict of float32 scalars: abs_sum, exp_sum, abs_max (0 with no valid token), count.
    """
    m = _valid(mask)
    d = jnp.abs(_zero_masked(jnp.asarray(sampler_logprobs, jnp.float32), m)
                - _zero_masked(jnp.asarray(trainer_logprobs, jnp.float32), m))
    return {"abs_sum": jnp.sum(d), "exp_sum": jnp.sum(jnp.where(m, jnp.exp(d), 0.0)),
            "abs_max": jnp.max(d, initial=0.0), "count": jnp.sum(m.astype(jnp.float32))}


def policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.4,
                clip_c=3.0, agg="token-mean", tis=None):
    """PPO clipped surrogate with decoupled clip ("clip-higher") and dual clip.

    ratio r = exp(clamp(logp - old_logp, -20, 20)); per-token loss
        l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    and for A < 0 additionally l = min(l, -A clip_c) (dual clip), then aggregated.

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens (differentiated).
        old_logprobs: [B, T] log pi_old (from the rollout policy), treated as constants.
        advantages: [B] (one per response, broadcast over T) or [B, T].
        mask: [B, T] valid response tokens.
        clip_low, clip_high: clip range [1 - clip_low, 1 + clip_high] (ProRL: 0.2, 0.4).
        clip_c: dual-clip constant > 1 (verl default 3.0); None disables the dual clip.
        agg: aggregation mode, see `aggregate`.
        tis: [B, T] truncated importance-sampling weights (`tis_weights`) multiplying each
            token's term l, or None.

    Returns:
        (loss float32 scalar, metrics dict of float32 scalars):
            pg_clipfrac: fraction of valid tokens where the clipped branch is taken;
            pg_clipfrac_lower: fraction of valid tokens where the dual clip is active;
            approx_kl: masked mean of old_logp - logp (clamped log-ratio);
            ratio_mean, ratio_max: of r over valid tokens (ratio_max 0 if none valid).
    """
    _check_clip_c(clip_c)
    m = _valid(mask)
    per_token, clipped, dual, log_ratio, ratio = _policy_terms(
        logprobs, old_logprobs, advantages, m, clip_low, clip_high, clip_c, tis)
    loss = aggregate(per_token, m, agg)
    sg = jax.lax.stop_gradient
    metrics = {
        "pg_clipfrac": masked_mean(sg(clipped), m),
        "pg_clipfrac_lower": masked_mean(sg(dual), m),
        "approx_kl": masked_mean(sg(-log_ratio), m),
        "ratio_mean": masked_mean(sg(ratio), m),
        "ratio_max": jnp.max(jnp.where(m, sg(ratio), 0.0)),
    }
    return loss, metrics


# ------------------------------------------------------------------------------- KL

def _kl_value(logprobs, ref_logprobs, kind):
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "abs":
        return jnp.abs(logprobs - ref_logprobs)
    if kind == "k2":
        return 0.5 * jnp.square(logprobs - ref_logprobs)
    d = jnp.clip(ref_logprobs - logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(d) - d - 1.0, -_K3_CLAMP, _K3_CLAMP)


def kl_penalty(logprobs, ref_logprobs, kind="low_var_kl"):
    """Per-token estimator of KL(pi_theta || pi_ref) from the sampled tokens' logprobs.

    With x = logp - ref_logp on tokens sampled from pi_theta:
        k1 / "kl":         x
        "abs":             |x|
        k2 / "mse":        x^2 / 2
        k3 / "low_var_kl": exp(d) - d - 1, d = clamp(-x, -20, 20), result clamped to [-10, 10]
        "<kind>+":         value of <kind>, gradient of k2 (straight-through), since k2's
                           gradient is the unbiased one for the KL (k1's and k3's are not).

    Args:
        logprobs: [B, T] log pi_theta (differentiated).
        ref_logprobs: [B, T] log pi_ref, treated as constants.
        kind: one of KL_KINDS.

    Returns:
        float32 [B, T] per-token values (mask them with `aggregate`).
    """
    base = kind[:-1] if kind.endswith("+") else kind
    if base not in KL_ALIASES:
        raise ConfigError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")
    canonical = KL_ALIASES[base]
    logprobs = jnp.asarray(logprobs, jnp.float32)
    ref_logprobs = jax.lax.stop_gradient(jnp.asarray(ref_logprobs, jnp.float32))
    value = _kl_value(logprobs, ref_logprobs, canonical)
    if not kind.endswith("+") or canonical == "k2":
        return value
    k2 = _kl_value(logprobs, ref_logprobs, "k2")
    return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)


# ------------------------------------------------------------------- composed loss

def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, *, clip_low=0.2,
              clip_high=0.4, clip_c=3.0, kl_coef=1e-4, kl_kind="low_var_kl", entropy=None,
              entropy_coef=0.0, agg="token-mean", tis=None):
    """The ProRL objective: policy loss + kl_coef * KL - entropy_coef * entropy.

    KL and entropy are aggregated with the same `agg` mode as the policy loss (as verl).
    Defaults are the ProRL v1 recipe (clip 0.2 / 0.4, dual clip 3, k3 KL with beta 1e-4,
    no entropy bonus, token-mean).

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens (differentiated).
        old_logprobs: [B, T] log pi_old from the rollout policy.
        ref_logprobs: [B, T] log pi_ref, or None for no KL term.
        advantages: [B] or [B, T].
        mask: [B, T] valid response tokens.
        clip_low, clip_high, clip_c: see `policy_loss`.
        kl_coef: weight of the aggregated KL estimator.
        kl_kind: KL estimator name, see `kl_penalty`.
        entropy: [B, T] per-token entropy of pi_theta (differentiated), or None for no
            entropy term.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        agg: aggregation mode, see `aggregate`.
        tis: [B, T] truncated importance-sampling weights of the policy term, or None.

    Returns:
        (loss float32 scalar, metrics dict of float32 scalars): `policy_loss`'s metrics plus
        loss, pg_loss, kl (aggregated estimator; only if ref_logprobs is given) and
        entropy (aggregated; only if entropy is given).
    """
    m = _valid(mask)
    pg_loss, metrics = policy_loss(logprobs, old_logprobs, advantages, m, clip_low=clip_low,
                                   clip_high=clip_high, clip_c=clip_c, agg=agg, tis=tis)
    loss = pg_loss
    metrics = {"pg_loss": jax.lax.stop_gradient(pg_loss), **metrics}
    if ref_logprobs is not None:
        kl = aggregate(kl_penalty(_zero_masked(logprobs, m), _zero_masked(ref_logprobs, m),
                                  kl_kind), m, agg)
        loss = loss + kl_coef * kl
        metrics["kl"] = jax.lax.stop_gradient(kl)
    if entropy is not None:
        ent = aggregate(entropy, m, agg)
        loss = loss - entropy_coef * ent
        metrics["entropy"] = jax.lax.stop_gradient(ent)
    metrics["loss"] = jax.lax.stop_gradient(loss)
    return loss, metrics


def weighted_grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, weights,
                       metric_weights, *, clip_low=0.2, clip_high=0.4, clip_c=3.0,
                       kl_coef=1e-4, kl_kind="low_var_kl", entropy=None, entropy_coef=0.0,
                       tis=None):
    """`grpo_loss` with the aggregation given as per-token weights (packed batches).

    With weights from `token_weights` (normalised over a whole mini-batch) and
    metric_weights = 1 / (valid tokens of the mini-batch), the values returned for any
    part of the mini-batch are partial sums: summed over the parts they equal what
    `grpo_loss(..., agg)` gives on the whole mini-batch (ratio_max combines by max).

    Args:
        logprobs, old_logprobs, ref_logprobs: [B, T] (ref may be None for no KL term).
        advantages: [B, T] per token (a sequence's advantage repeated over its tokens).
        mask: [B, T] valid (response) tokens.
        weights: float32 [B, T] aggregation weight of each token (0 off the mask).
        metric_weights: float32 scalar or [B, T]: token-mean weight of the metrics.
        entropy, tis: [B, T] or None; other arguments as in `grpo_loss`.

    Returns:
        (loss float32 scalar, metrics dict of float32 scalars): the keys of `grpo_loss`.
    """
    _check_clip_c(clip_c)
    m = _valid(mask)
    w = _zero_masked(weights, m).astype(jnp.float32)
    mw = _zero_masked(jnp.broadcast_to(jnp.asarray(metric_weights, jnp.float32), m.shape), m)
    per_token, clipped, dual, log_ratio, ratio = _policy_terms(
        logprobs, old_logprobs, advantages, m, clip_low, clip_high, clip_c, tis)
    wsum = lambda x: jnp.sum(w * _zero_masked(x, m).astype(jnp.float32))  # noqa: E731
    sg = jax.lax.stop_gradient
    msum = lambda x: jnp.sum(mw * _zero_masked(sg(x), m).astype(jnp.float32))  # noqa: E731
    pg_loss = wsum(per_token)
    loss = pg_loss
    metrics = {"pg_loss": sg(pg_loss), "pg_clipfrac": msum(clipped),
               "pg_clipfrac_lower": msum(dual), "approx_kl": msum(-log_ratio),
               "ratio_mean": msum(ratio), "ratio_max": jnp.max(jnp.where(m, sg(ratio), 0.0))}
    if ref_logprobs is not None:
        kl = wsum(kl_penalty(_zero_masked(logprobs, m), _zero_masked(ref_logprobs, m), kl_kind))
        loss = loss + kl_coef * kl
        metrics["kl"] = sg(kl)
    if entropy is not None:
        ent = wsum(entropy)
        loss = loss - entropy_coef * ent
        metrics["entropy"] = sg(ent)
    metrics["loss"] = sg(loss)
    return loss, metrics
