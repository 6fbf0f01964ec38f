"""Orbax checkpoints of a training run: policy params, the rest of the train state, JSON meta.

Layout (RUN_DIR/checkpoints/<step>/): three Orbax items
    params  the policy params (all that `convert orbax-to-hf` needs)
    state   everything else that must survive a restart: optimizer state, reference
            params, step (a pytree; absent in params-only checkpoints; checkpoints written
            before 2026-12 also hold an unused PRNG key "rng", which restores ignore)
    meta    JSON: {"model_config": <HF config dict>, "data_iterator": ..., ...}

Orbax writes each step into a temporary directory and renames it when done; we also
require its commit markers before we call a step complete, so a checkpoint torn by a
crash or SIGKILL mid-write is never taken as the latest (it is ignored and logged).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from prorl_jax.errors import CheckpointError

log = logging.getLogger(__name__)

ITEMS = ("params", "state", "meta")
_COMMIT_MARKER = "commit_success.txt"


def is_complete(step_dir: pathlib.Path) -> bool:
    """True when Orbax finished writing this step (top level and every item present)."""
    if not (step_dir / _COMMIT_MARKER).is_file():
        return False
    items = [p for p in step_dir.iterdir() if p.is_dir()]
    return bool(items) and all((p / _COMMIT_MARKER).is_file() for p in items)


def complete_steps(directory: str | pathlib.Path) -> list[int]:
    """Steps under `directory` whose checkpoints were fully written, ascending."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for p in directory.iterdir():
        if not (p.is_dir() and p.name.isdigit()):
            continue
        if is_complete(p):
            steps.append(int(p.name))
        else:
            log.warning("ignoring incomplete checkpoint %s (torn write)", p)
    return sorted(steps)


class Checkpointer:
    """Saves and restores (params, state, meta) triples under one directory.

    Args:
      directory: where step directories go (created).
      keep_last: number of most recent checkpoints kept (None: all).
      async_save: write in a background thread; call `wait()` before relying on it.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep_last: int | None = 3,
                 async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, params: Any, state: Any | None, meta: dict) -> None:
        """Writes step `step` (replacing an earlier checkpoint of the same step)."""
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if state is not None:
            items["state"] = ocp.args.StandardSave(state)
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def latest_step(self) -> int | None:
        self.wait()
        steps = complete_steps(self.directory)
        return steps[-1] if steps else None

    def saved_state(self, step: int) -> dict:
        """{key: array metadata (shape, dtype)} of the top level of step `step`'s "state"
        item ({} when it has none), read without restoring anything."""
        state_dir = self.directory / str(step) / "state"
        if not state_dir.is_dir():
            return {}
        return dict(ocp.StandardCheckpointHandler().metadata(state_dir).items())

    def restore(self, step: int | None = None, *, params_target: Any = None,
                state_target: Any = None, with_state: bool = True):
        """Restores (params, state, meta) of `step` (default: the latest complete one).

        Targets are abstract pytrees (jax.ShapeDtypeStruct with shardings) giving the
        layout to restore into; None restores as saved. `with_state=False` skips "state"
        (returned as None), e.g. to export the policy only.
        """
        return restore(self.directory, step, params_target=params_target,
                       state_target=state_target, with_state=with_state, manager=self._manager)


def resolve_step(directory: str | pathlib.Path, step: int | None = None) -> int:
    """`step` if complete in `directory`, the latest complete step if None; else an error."""
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    steps = complete_steps(directory)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"step {step} not found in {directory} (complete steps: {steps})")
    return step


def restore_meta(directory: str | pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """(step, meta) of a checkpoint without touching its arrays."""
    step = resolve_step(directory, step)
    manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        out = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for corrupt data
        raise CheckpointError(f"could not read meta of {directory}/{step}: {e}") from e
    finally:
        manager.close()
    if not isinstance(out["meta"], dict):
        raise CheckpointError(f"{directory}/{step}: meta is not a JSON object")
    return step, dict(out["meta"])


def restore(directory: str | pathlib.Path, step: int | None = None, *, params_target: Any = None,
            state_target: Any = None, with_state: bool = True, manager=None):
    """Restores (params, state, meta) from a checkpoint directory; see Checkpointer.restore."""
    directory = pathlib.Path(directory).absolute()
    step = resolve_step(directory, step)
    step_dir = directory / str(step)
    present = {p.name for p in step_dir.iterdir() if p.is_dir()}
    if "params" not in present or "meta" not in present:
        raise CheckpointError(f"{step_dir} lacks the 'params' or 'meta' item")
    items = {"params": ocp.args.StandardRestore(params_target), "meta": ocp.args.JsonRestore()}
    if with_state and "state" in present:
        items["state"] = ocp.args.StandardRestore(state_target)
    own = manager is None
    if own:
        manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        out = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for corrupt data
        raise CheckpointError(f"could not restore {step_dir}: {type(e).__name__}: {e}") from e
    finally:
        if own:
            manager.close()
    state = out["state"] if (with_state and "state" in present) else None
    return out["params"], state, dict(out["meta"])
