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

A step that is committed but damaged afterwards (an item directory deleted, an array file
truncated by a full disk or a bad copy) raises DamagedCheckpointError naming the step and
the newest complete step before it, so the caller can offer to fall back to that one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys
import traceback
from typing import Any

import orbax.checkpoint as ocp

from prorl_jax.errors import CheckpointError, DamagedCheckpointError

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
    if not (pathlib.Path(directory).absolute() / str(step) / "meta").is_dir():
        raise damaged(pathlib.Path(directory).absolute(), step, "has no 'meta' item")
    with quiet_orbax():
        manager = ocp.CheckpointManager(
            pathlib.Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(read_only=True, create=False))
        try:
            out = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many types for corrupt data
            raise damaged(pathlib.Path(directory).absolute(), step,
                          f"has an unreadable 'meta' item ({_short_reason(e)})") from None
        finally:
            manager.close()
    if not isinstance(out["meta"], dict):
        raise CheckpointError(f"{directory}/{step}: meta is not a JSON object")
    return step, dict(out["meta"])


def restore(directory: str | pathlib.Path, step: int | None = None, *, params_target: Any = None,
            state_target: Any = None, with_state: bool = True, manager=None):
    """Restores (params, state, meta) from a checkpoint directory; see Checkpointer.restore.

    Raises:
      DamagedCheckpointError: the step lacks an item it needs ("state" when state_target is
        given) or an array cannot be read.
    """
    directory = pathlib.Path(directory).absolute()
    step = resolve_step(directory, step)
    step_dir = directory / str(step)
    require_items(directory, step, ("params", "meta", "state")
                  if with_state and state_target is not None else ("params", "meta"))
    present = {p.name for p in step_dir.iterdir() if p.is_dir()}
    items = {"params": ocp.args.StandardRestore(params_target), "meta": ocp.args.JsonRestore()}
    if with_state and "state" in present:
        items["state"] = ocp.args.StandardRestore(state_target)
    own = manager is None
    with quiet_orbax():
        if own:
            manager = ocp.CheckpointManager(
                directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
        _mute_orphaned_reads()
        try:
            out = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # Orbax raises many types for corrupt data
            if _is_read_failure(e):
                raise damaged(directory, step, f"cannot be read: {_short_reason(e)}") from None
            raise CheckpointError(f"could not restore {step_dir}: {type(e).__name__}: "
                                  f"{_short_reason(e)}") from None
        finally:
            if own:
                manager.close()
    state = out["state"] if (with_state and "state" in present) else None
    return out["params"], state, dict(out["meta"])


def require_items(directory: str | pathlib.Path, step: int, needed=ITEMS) -> None:
    """Raise DamagedCheckpointError when step `step` lacks one of the `needed` items."""
    step_dir = pathlib.Path(directory).absolute() / str(step)
    missing = [name for name in needed if not (step_dir / name).is_dir()]
    if missing:
        what = " and ".join(f"'{m}'" for m in missing)
        why = (" (optimizer, reference policy, rng), so training cannot resume from it"
               if missing == ["state"] else "")
        raise damaged(directory, step, f"has no {what} item{why}")


def damaged(directory: str | pathlib.Path, step: int, what: str) -> DamagedCheckpointError:
    """The error for a committed but unreadable `step`, naming the previous complete step."""
    earlier = [s for s in complete_steps(directory) if s < step]
    fallback = earlier[-1] if earlier else None
    tail = (f"; the previous complete step is {fallback}" if fallback is not None
            else "; there is no earlier complete step")
    return DamagedCheckpointError(f"checkpoint step {step} in {directory} {what}{tail}",
                                  step, fallback)


# TensorStore's words for data that is missing, truncated or garbled (as opposed to a
# target that does not match what was saved).
_READ_FAILURES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "Error reading", "Error decoding",
                  "error while reading")


def _is_read_failure(e: BaseException) -> bool:
    text = f"{e} {e.__cause__ or ''}"
    return any(marker in text for marker in _READ_FAILURES)


def _short_reason(e: BaseException) -> str:
    """One line out of an Orbax/TensorStore error (they embed a 60-line TensorStore spec)."""
    text = str(e)
    array = re.search(r"'path': '([^'/][^']*)/'", text) or re.search(r'"([^"/]+)/\.z', text)
    first = text.split(" See full TensorStore details")[0].splitlines()[0] if text else ""
    first = re.sub(r" index: \(.*\)\.?$", "", first)[:200]
    return f"array {array.group(1)}: {first}" if array else first or type(e).__name__


class _OrphanedOrbaxTasks(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" reports of Orbax reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" not in message.split("\n", 1)[0]:
            return True
        # A plain Future's or _GatheringFuture's report names no coroutine: the Orbax frames
        # are only in its traceback, and TensorStore spells itself "TensorStore".
        text = message.lower()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text += "".join(f.filename.lower() for f in traceback.extract_tb(exc.__traceback__))
            text += str(exc).lower()
        return not ("orbax" in text or "tensorstore" in text)


def _is_closed_loop_callback(exc: BaseException) -> bool:
    """A TensorStore read finishing after Orbax closed its event loop: the callback's
    `loop.call_soon_threadsafe` raises RuntimeError from asyncio's frames alone."""
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and all(f"{os.sep}asyncio{os.sep}" in f.filename for f in frames)


def _mute_orphaned_reads() -> None:
    """When a restore fails, Orbax raises on the first failed array while its other reads
    go on, and each of those ends in a report that has nothing to add to the error raised:

    - "Exception ignored in <coroutine ...>" tracebacks through sys.unraisablehook (once
      per array, hundreds of lines) when the pending coroutines are garbage-collected;
    - asyncio's "Task exception was never retrieved" / "_GatheringFuture exception was
      never retrieved" through the "asyncio" logger, when other arrays failed too (they
      often share the damaged OCDBT data file);
    - "RuntimeError: Event loop is closed" tracebacks through sys.excepthook, printed by
      TensorStore's threads when a read completes after Orbax closed its loop; they can
      come while the first error is still being raised, so this is installed before the
      restore starts, not after it fails.

    Those reports are dropped; every other unraisable exception, asyncio error and
    uncaught exception still shows. Installed once per process."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrphanedOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_OrphanedOrbaxTasks())

    previous_excepthook = sys.excepthook
    if not getattr(previous_excepthook, "_prorl_mutes_orbax", False):
        def excepthook(exc_type, exc, tb):
            if not _is_closed_loop_callback(exc):
                previous_excepthook(exc_type, exc, tb)

        excepthook._prorl_mutes_orbax = True
        sys.excepthook = excepthook

    previous = sys.unraisablehook
    if getattr(previous, "_prorl_mutes_orbax", False):
        return

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        source = getattr(code, "co_filename", "") or ""
        message = str(unraisable.exc_value)
        if "orbax" in source or "tensorstore" in source or "Event loop is closed" in message:
            return
        previous(unraisable)

    hook._prorl_mutes_orbax = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs absl WARNINGs for every read-only manager; a reader need not see them."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
