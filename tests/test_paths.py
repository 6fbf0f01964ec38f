"""prorl_jax.paths: the one model-directory resolver and the output-path checks."""

import os

import pytest

from prorl_jax.errors import CheckpointError, UserError
from prorl_jax.paths import (
    ASSETS_DIR,
    check_output_dir,
    check_output_file,
    resolve_model_dir,
)


def test_resolve_model_dir(tmp_path):
    assert resolve_model_dir("builtin:demo_base") == str(ASSETS_DIR / "demo_base")
    assert resolve_model_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(CheckpointError, match=r"not found: builtin:nope \(built-in models: "
                                              r"builtin:demo_base\)"):
        resolve_model_dir("builtin:nope")
    with pytest.raises(CheckpointError, match="not found: builtin:../x"):
        resolve_model_dir("builtin:../x")
    (tmp_path / "f").write_text("")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        resolve_model_dir(str(tmp_path / "f"))
    with pytest.raises(CheckpointError, match="model directory not found"):
        resolve_model_dir(str(tmp_path / "missing"))


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path, "--out")  # exists, writable
    check_output_dir(tmp_path / "a" / "b", "--out")  # creatable
    assert not (tmp_path / "a").exists()  # a check creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out .*/file: not a directory$"):
        check_output_dir(tmp_path / "file", "--out")
    with pytest.raises(UserError, match=r"not a directory \(.*/file is a file\)"):
        check_output_dir(tmp_path / "file" / "sub", "--run-dir")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(UserError, match=r"--out .*/ro: directory .*/ro is not writable"):
            check_output_dir(ro, "--out")
        with pytest.raises(UserError, match=r"parent directory .*/ro is not writable"):
            check_output_dir(ro / "new", "--out")
    finally:
        os.chmod(ro, 0o755)


def test_check_output_file(tmp_path):
    check_output_file(tmp_path / "new.jsonl", "--out")
    check_output_file(tmp_path / "sub" / "new.jsonl", "--out")
    with pytest.raises(UserError, match="is a directory, expected a file name"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "ro.jsonl").write_text("")
    os.chmod(tmp_path / "ro.jsonl", 0o444)
    with pytest.raises(UserError, match="file is not writable"):
        check_output_file(tmp_path / "ro.jsonl", "--out")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        check_output_file(tmp_path / "f" / "x.jsonl", "--out")


def test_resolve_without_checking_for_the_dry_run_planner(tmp_path):
    from prorl_jax.paths import ASSETS_DIR, resolve_model_dir

    assert resolve_model_dir("builtin:nothing_here", must_exist=False) == str(ASSETS_DIR / "nothing_here")
    assert resolve_model_dir(tmp_path / "missing", must_exist=False) == str(tmp_path / "missing")
