"""Model names -> checkpoint directories: local paths and builtin:NAME assets."""

import pytest

from prorl_jax.errors import CheckpointError
from prorl_jax.model.paths import ASSETS_DIR, resolve_model_dir


def test_resolve_model_dir(tmp_path, monkeypatch):
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    assert resolve_model_dir(tmp_path) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_dir("~") == tmp_path
    with pytest.raises(CheckpointError, match="model directory not found"):
        resolve_model_dir(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="builtin:nothing_here"):
        resolve_model_dir("builtin:nothing_here")
    # The dry-run planner resolves names of checkpoints that are not on this machine.
    assert resolve_model_dir("builtin:nothing_here", must_exist=False) == ASSETS_DIR / "nothing_here"
    assert resolve_model_dir(tmp_path / "missing", must_exist=False) == tmp_path / "missing"
