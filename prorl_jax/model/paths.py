"""Where a checkpoint named on the command line or in a config lives.

A model is named by a local directory or by `builtin:NAME`, a model shipped in
prorl_jax/assets (the demo base model is `builtin:demo_base`). Training, evaluation and
the dry-run planner all resolve names here, so they accept the same names.
"""

from __future__ import annotations

import pathlib

from prorl_jax.errors import CheckpointError

ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"
BUILTIN = "builtin:"


def resolve_model_dir(path: str | pathlib.Path, *, must_exist: bool = True) -> pathlib.Path:
    """A model name -> its checkpoint directory.

    Args:
      path: a local directory ("~" expands) or "builtin:NAME" (prorl_jax/assets/NAME).
      must_exist: raise when the directory is missing (False: the dry-run planner, which
        falls back to model.preset for a checkpoint that is not on this machine).
    Raises:
      CheckpointError: must_exist and the directory does not exist.
    """
    text = str(path)
    resolved = (ASSETS_DIR / text[len(BUILTIN):] if text.startswith(BUILTIN)
                else pathlib.Path(text).expanduser())
    if must_exist and not resolved.is_dir():
        raise CheckpointError(f"model directory not found: {text}")
    return resolved
