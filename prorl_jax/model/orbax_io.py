"""Model params in Orbax checkpoints: the "params" and "meta" items of docs/CONTRACTS.md.

The trainer's checkpoints use the same item names ("params", "state", "meta"), so these
functions read the policy out of a training checkpoint too; "state" is never touched here.
"meta" is JSON holding at least {"model_config": <Hugging Face config dict>}.
"""

from __future__ import annotations

import jax

from prorl_jax import checkpoint, sharding
from prorl_jax.errors import CheckpointError, ConfigError, DamagedCheckpointError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig


def save_orbax(directory: str, cfg: ModelConfig, params, step: int = 0,
               meta: dict | None = None) -> None:
    """Write params + {"model_config": cfg.to_hf_config(), **meta} as Orbax step `step`."""
    meta = {**(meta or {}), "model_config": cfg.to_hf_config()}
    if step in checkpoint.complete_steps(directory):
        raise CheckpointError(f"{directory} already holds step {step}")
    ckpt = checkpoint.Checkpointer(directory, keep_last=None, async_save=False)
    ckpt.save(step, params, None, meta)
    ckpt.close()


def latest_step(directory: str) -> int:
    """The newest completely written step in `directory` (CheckpointError when none)."""
    return checkpoint.resolve_step(directory)


def load_orbax(directory: str, step: int | None = None, mesh=None, rules=None):
    """Read the model back from an Orbax checkpoint (a training one or a params-only one).

    Args:
      directory: the CheckpointManager directory.
      step: which step (default the latest complete one).
      mesh, rules: restore each param straight into its sharding (default TRAIN_RULES).
    Returns:
      (ModelConfig, params, meta dict).
    """
    step, meta = checkpoint.restore_meta(directory, step)
    if "model_config" not in meta:
        raise CheckpointError(f"{directory} step {step}: 'meta' has no model_config")
    try:
        cfg = ModelConfig.from_hf_config(meta["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory} step {step}: meta.model_config: {e}") from e
    shapes = qwen.param_shapes(cfg)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        targets = jax.tree.map(lambda _: device, shapes)
    else:
        targets = qwen.param_shardings(cfg, mesh, sharding.TRAIN_RULES if rules is None else rules)
    abstract = jax.tree.map(lambda s, t: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=t),
                            shapes, targets)
    try:
        params, _, _ = checkpoint.restore(directory, step, params_target=abstract,
                                          with_state=False)
    except DamagedCheckpointError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"{directory} step {step}: 'params' do not match "
                              f"meta.model_config ({e})") from e
    return cfg, params, meta
