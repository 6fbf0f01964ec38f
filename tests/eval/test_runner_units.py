"""Small pieces of the runner: labels, seeds, settings checks (model paths: tests/model/
test_paths.py; stop ids: tests/test_tokenizer.py)."""


import pytest

from prorl_jax.eval.passk import EvalError
from prorl_jax.eval.runner import (
    EvalSettings,
    _check_settings,
    _write_settings,
    batch_seed,
    model_labels,
)


def test_model_labels_are_unique_and_file_safe():
    assert model_labels(["/a/base", "/b/run1/hf"]) == ["base", "hf"]
    assert model_labels(["/x/run1/hf", "/x/run2/hf"]) == ["run1_hf", "run2_hf"]
    assert model_labels(["m", "m"]) == ["m", "m-1"]
    assert model_labels(["builtin:demo_base", "/p/my model!"]) == ["demo_base", "my_model"]


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
