"""Old logprobs from the trainer or from the sampler (rl.old_logprobs), the rollout/trainer
logprob mismatch, and truncated importance sampling (rl.tis_cap).

The PPO ratio compares the current policy with the policy that drew the rollout. In
"recompute" mode a no-gradient forward pass of the trainer gives those old logprobs; in
"sampler" mode the sampler's own per-token logprobs (the same quantity: log softmax(logits /
temperature) over the full vocabulary, sampling/strategies.py) are used and the pass is
skipped. Whenever both are known, each step logs how far they are apart:

- recompute: over every response token of the step (the old pass sees all of them);
- sampler: over the first PPO mini-batch of the step, measured inside its train step at no
  extra cost: before the first optimizer update the current policy is the old policy, so
  its logprobs there are the trainer's old logprobs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prorl_jax import losses
from prorl_jax.config import RLConfig

# mean and max |logp_sampler - logp_trainer| over response tokens, and the mean of
# exp(|d|) (NeMo-RL's token_mult_prob_error). Names ending in "max" combine by max
# (update.combines_by_max).
MEAN, MAX, MULT = "logp_mismatch/mean", "logp_mismatch/max", "logp_mismatch/mult_prob_error"
KEYS = (MEAN, MAX, MULT)

_mismatch_sums = jax.jit(losses.logprob_mismatch)
_tis_weights = jax.jit(losses.tis_weights, static_argnames=("cap",))


def _mask(mb: dict):
    return mb["loss_mask"] if "loss_mask" in mb else mb["response_mask"]


def attach(rl: RLConfig, mb: dict) -> dict | None:
    """Completes one (micro-)batch once its old logprobs are set: the TIS weights when
    rl.tis_cap is on, and (recompute mode) the mismatch partial sums, returned.

    mb: a packed micro-batch ([b, T]) or a padded mini-batch ([M, b, R]) dict holding
    old_logprobs and, when it came from the sampler, sampler_logprobs (rl/batch.py).
    Returns the device partial sums of `losses.logprob_mismatch`, or None.
    """
    if "sampler_logprobs" not in mb:
        if rl.old_logprobs == "sampler" or rl.tis_cap:
            raise ValueError("rl.old_logprobs: sampler and rl.tis_cap need the rollout's "
                             "logprobs (Groups.logprobs)")
        return None
    if rl.tis_cap:
        mb["tis_weights"] = _tis_weights(mb["old_logprobs"], mb["sampler_logprobs"],
                                         cap=float(rl.tis_cap), mask=_mask(mb))
    if rl.old_logprobs != "recompute":
        return None
    return _mismatch_sums(mb["sampler_logprobs"], mb["old_logprobs"], _mask(mb))


def from_sums(parts: list[dict]) -> dict[str, float]:
    """The logged mismatch metrics of the partial sums of several (micro-)batches."""
    if not parts:
        return {}
    count = sum(float(p["count"]) for p in parts)
    if count == 0:
        return {}
    return {MEAN: sum(float(p["abs_sum"]) for p in parts) / count,
            MAX: max(float(p["abs_max"]) for p in parts),
            MULT: sum(float(p["exp_sum"]) for p in parts) / count}


def in_step(rl: RLConfig, logp, mb: dict, metric_weight=None) -> dict:
    """Sampler mode: the mismatch metrics of a train step's current-policy logprobs `logp`
    against the sampler's (exact on the step's first mini-batch; see the module docstring).

    metric_weight: packed micro-batches' token-mean weight (1 / tokens of the mini-batch):
    the values are then partial sums over micro-batches; None (padded): means over the
    micro-batch, which the padded step combines by its micro-batch weights.
    Returns {} in recompute mode.
    """
    if rl.old_logprobs != "sampler":
        return {}
    s = losses.logprob_mismatch(mb["sampler_logprobs"], jax.lax.stop_gradient(logp), _mask(mb))
    scale = (jnp.asarray(metric_weight, jnp.float32) if metric_weight is not None
             else 1.0 / jnp.maximum(s["count"], 1.0))
    return {MEAN: s["abs_sum"] * scale, MAX: s["abs_max"], MULT: s["exp_sum"] * scale}


def step_metrics(rl: RLConfig, sums: list[dict], collected: list[dict]) -> dict[str, float]:
    """The step's mismatch metrics: from the old-logprob pass (recompute) or from the first
    train step (sampler); overrides what averaging the train steps' metrics gave."""
    if rl.old_logprobs == "recompute":
        return from_sums(sums)
    first = collected[0]
    return {k: float(first[k]) for k in KEYS if k in first}


__all__ = ["KEYS", "attach", "from_sums", "in_step", "step_metrics"]
