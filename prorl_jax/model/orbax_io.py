"""Model params in Orbax checkpoints: the "params" and "meta" items of docs/CONTRACTS.md.

The trainer's checkpoints use the same item names ("params", "state", "meta"), so these
functions read the policy out of a training checkpoint too; "state" is never touched here.
"meta" is JSON holding at least {"model_config": <Hugging Face config dict>}.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from prorl_jax import sharding
from prorl_jax.errors import CheckpointError, ConfigError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("params", "meta"),
        options=ocp.CheckpointManagerOptions(create=create))


def save_orbax(directory: str, cfg: ModelConfig, params, step: int = 0,
               meta: dict | None = None) -> None:
    """Write params + {"model_config": cfg.to_hf_config(), **meta} as Orbax step `step`."""
    meta = {**(meta or {}), "model_config": cfg.to_hf_config()}
    with _manager(directory, create=True) as mgr:
        if step in mgr.all_steps():
            raise CheckpointError(f"{directory} already holds step {step}")
        mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               meta=ocp.args.JsonSave(meta)))
        mgr.wait_until_finished()


def latest_step(directory: str) -> int:
    """The newest step saved in `directory` (CheckpointError when there is none)."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    with _manager(directory, create=False) as mgr:
        step = mgr.latest_step()
    if step is None:
        raise CheckpointError(f"{directory} holds no Orbax checkpoint steps")
    return step


def load_orbax(directory: str, step: int | None = None, mesh=None, rules=None):
    """Read the model back from an Orbax checkpoint.

    Args:
      directory: the CheckpointManager directory.
      step: which step (default the latest).
      mesh, rules: restore each param straight into its sharding (default TRAIN_RULES).
    Returns:
      (ModelConfig, params, meta dict).
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    with _manager(directory, create=False) as mgr:
        steps = mgr.all_steps()
        if not steps:
            raise CheckpointError(f"{directory} holds no Orbax checkpoint steps")
        step = max(steps) if step is None else step
        if step not in steps:
            raise CheckpointError(f"{directory} has no step {step} (steps: {sorted(steps)})")
        try:
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise CheckpointError(f"{directory} step {step}: no readable 'meta' item ({e})") from e
        if not isinstance(meta, dict) or "model_config" not in meta:
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
            params = mgr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract)))["params"]
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise CheckpointError(f"{directory} step {step}: 'params' do not match "
                                  f"meta.model_config ({e})") from e
    return cfg, params, meta
