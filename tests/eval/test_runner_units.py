"""Small pieces of the runner: labels, model paths, stop ids, seeds, settings checks."""

import json
import types

import pytest

from prorl_jax.errors import CheckpointError
from prorl_jax.eval.passk import EvalError
from prorl_jax.eval.runner import (
    EvalSettings,
    _check_settings,
    _write_settings,
    batch_seed,
    model_labels,
    resolve_model_dir,
    stop_token_ids,
)


def test_model_labels_are_unique_and_file_safe():
    assert model_labels(["/a/base", "/b/run1/hf"]) == ["base", "hf"]
    assert model_labels(["/x/run1/hf", "/x/run2/hf"]) == ["run1_hf", "run2_hf"]
    assert model_labels(["m", "m"]) == ["m", "m-1"]
    assert model_labels(["builtin:demo_base", "/p/my model!"]) == ["demo_base", "my_model"]


def test_resolve_model_dir(tmp_path):
    assert resolve_model_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(CheckpointError, match="model directory not found"):
        resolve_model_dir(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="builtin:nothing_here"):
        resolve_model_dir("builtin:nothing_here")


def test_stop_token_ids_merge_all_sources(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    tok = types.SimpleNamespace(eos_token_id=3)
    cfg = types.SimpleNamespace(eos_token_id=9)
    assert stop_token_ids(str(tmp_path), tok, cfg) == (3, 7, 9)
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no eos token"):
        stop_token_ids(str(empty), types.SimpleNamespace(eos_token_id=None),
                       types.SimpleNamespace(eos_token_id=None))


def test_batch_seed_depends_on_ids_not_position():
    a = batch_seed(0, ["p1", "p2"])
    assert a == batch_seed(0, ["p1", "p2"])
    assert a != batch_seed(0, ["p3", "p4"]) and a != batch_seed(1, ["p1", "p2"])
    assert 0 <= a < 2 ** 31


def test_settings_file_written_then_checked(tmp_path):
    path = str(tmp_path / "s" / "m.json")
    key = EvalSettings(n=4).sample_key()
    _check_settings(path, key)  # nothing there yet: accepted, and nothing written
    assert not (tmp_path / "s").exists()
    _write_settings(path, key)
    _check_settings(path, dict(key))  # same settings: accepted
    with pytest.raises(EvalError, match="temperature=0.6"):
        _check_settings(path, {**key, "temperature": 1.0})
    with pytest.raises(EvalError):
        EvalSettings(n=0)
