"""The train state pytree and the optimizer that updates it."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from prorl_jax.config import OptimConfig


@flax.struct.dataclass
class TrainState:
    """Everything a step needs besides the data iterator (which lives in checkpoint meta).

    step:       int32 [], completed RL steps
    params:     policy params
    opt_state:  optax state of the policy params
    ref_params: reference policy for the KL term (reset to `params` by ProRL resets)

    No PRNG key: sampler seeds are a function of (config seed, step, generation batch)
    (`trainer.seed_for`), so they need no state to resume exactly.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ref_params: Any


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a constant (or linear-warmup-then-constant) lr."""
    if cfg.warmup_steps > 0:
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
            [cfg.warmup_steps])
    else:
        lr = cfg.lr
    adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: reference = a copy of the initial policy, optimizer moments zero."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      ref_params=jax.tree.map(jnp.copy, params))


def reset_reference(state: TrainState, optimizer: optax.GradientTransformation, *,
                    reset_optimizer: bool) -> TrainState:
    """ProRL's hard reset: reference := policy; optimizer state re-initialised when asked (v1)."""
    opt_state = optimizer.init(state.params) if reset_optimizer else state.opt_state
    return state.replace(ref_params=jax.tree.map(jnp.copy, state.params), opt_state=opt_state)
