"""Paths the user hands to a command: model directories and output locations.

  resolve_model_dir   "builtin:NAME" or a directory -> the checkpoint directory (all commands)
  check_output_dir    an output directory can be created / written, before anything is
  check_output_file   the same for an output file

The checks run before any slow or writing step, so a mistyped or read-only destination ends
as one line (a UserError) and leaves nothing behind. No jax import: the CLI modules use this.
"""

from __future__ import annotations

import os
import pathlib

from prorl_jax.errors import CheckpointError, UserError

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
BUILTIN_PREFIX = "builtin:"


def builtin_names() -> list[str]:
    """Names usable as builtin:NAME (the models shipped in prorl_jax/assets)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir())


def resolve_model_dir(spec: str | os.PathLike, what: str = "model directory", *,
                      must_exist: bool = True) -> str:
    """A model argument -> its checkpoint directory.

    Args:
      spec: a local directory, or "builtin:NAME" for prorl_jax/assets/NAME.
      what: how the message names the argument.
      must_exist: False resolves without checking (the dry-run planner, which falls back
        to model.preset for a checkpoint that is not on this machine).

    Returns:
      the directory path (`~` expanded).

    Raises:
      CheckpointError: the directory does not exist (or NAME is not shipped).
    """
    spec = os.fspath(spec)
    if not must_exist:
        if spec.startswith(BUILTIN_PREFIX):
            return str(ASSETS_DIR / spec[len(BUILTIN_PREFIX):])
        return os.path.expanduser(spec)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        path = ASSETS_DIR / name
        if not name or os.sep in name or not path.is_dir():
            known = ", ".join(f"builtin:{n}" for n in builtin_names()) or "none shipped"
            raise CheckpointError(f"{what} not found: {spec} (built-in models: {known})")
        return str(path)
    path = os.path.expanduser(spec)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{what} {spec} is a file, not a directory")
    if not os.path.isdir(path):
        raise CheckpointError(f"{what} not found: {spec}")
    return path


def _first_existing(path: str) -> str:
    """`path` or its nearest existing ancestor."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Raise a UserError unless `path` is (or can be created as) a writable directory.

    Nothing is created here. `flag` names the option in the message (e.g. "--out").
    """
    path = os.path.expanduser(os.fspath(path))
    existing = _first_existing(path)
    if not os.path.isdir(existing):
        where = "" if existing == os.path.abspath(path) else f" ({existing} is a file)"
        raise UserError(f"{flag} {path}: not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK) or _write_protected(existing):
        kind = "directory" if existing == os.path.abspath(path) else "parent directory"
        raise UserError(f"{flag} {path}: {kind} {existing} is not writable")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Raise a UserError unless `path` can be written as a file (its directory may be
    created). Nothing is created here."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory, expected a file name")
    if os.path.exists(path):
        if not os.access(path, os.W_OK) or _write_protected(path):
            raise UserError(f"{flag} {path}: file is not writable")
        return
    check_output_dir(os.path.dirname(os.path.abspath(path)), flag)


def _write_protected(path: str) -> bool:
    """True when every write bit of `path` is off. `os.access` answers yes for root there;
    a file or directory made read-only on purpose is refused for every user alike."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not mode & 0o222
