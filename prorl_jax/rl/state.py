"""The train state pytree and the optimizer that updates it."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

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


def _on_params_mesh(tree, params):
    """`tree` with the leaves not on the params' mesh (scalars optax and the step counter
    create on one local device) replicated over that mesh: a jitted program cannot mix
    them with mesh arrays once they are committed (every step commits its outputs), and
    under several processes a one-device array is a different device on each process.
    Unchanged without a mesh."""
    first = jax.tree.leaves(params)[0]
    if not isinstance(first.sharding, NamedSharding):
        return tree
    replicated = NamedSharding(first.sharding.mesh, PartitionSpec())

    def place(x):
        if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == replicated.mesh:
            return x
        host = np.asarray(x)  # a local one-device array
        return jax.make_array_from_callback(host.shape, replicated, lambda idx: host[idx])

    return jax.tree.map(place, tree)


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: reference = a copy of the initial policy, optimizer moments zero."""
    return TrainState(step=_on_params_mesh(jnp.zeros((), jnp.int32), params), params=params,
                      opt_state=_on_params_mesh(optimizer.init(params), params),
                      ref_params=jax.tree.map(jnp.copy, params))


def reset_reference(state: TrainState, optimizer: optax.GradientTransformation, *,
                    reset_optimizer: bool) -> TrainState:
    """ProRL's hard reset: reference := policy; optimizer state re-initialised when asked (v1)."""
    opt_state = (_on_params_mesh(optimizer.init(state.params), state.params) if reset_optimizer
                 else state.opt_state)
    return state.replace(ref_params=jax.tree.map(jnp.copy, state.params), opt_state=opt_state)
