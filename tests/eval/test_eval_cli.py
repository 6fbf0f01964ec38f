"""`prorl-jax eval` as a newcomer meets it, in subprocesses: a response budget the model cannot
hold, unusable --out paths and a model without a tokenizer are one line and exit 2 with
nothing written; a failed run leaves --out reusable; one model prints its pass@k table."""

import os
import shutil

import pytest
from cli_run import ROOT, assert_one_line_error, prorl

from prorl_jax.tokenizer import TOKENIZER_FILES

DEMO_BASE = ROOT / "prorl_jax" / "assets" / "demo_base"
DATA = "reasoning_gym:basic_arithmetic:2"


def small_eval(out, *extra):
    return prorl("eval", "--model", "builtin:demo_base", "--data", DATA, "--n", "2",
                 "--no-progress", "--reward-workers", "0", "--out", str(out), *extra)


def test_budget_beyond_the_model_then_the_corrected_command_into_the_same_out(tmp_path):
    out = tmp_path / "out"
    # The default --max-new-tokens 32768 against the demo model's 2048 positions.
    proc = small_eval(out)
    assert_one_line_error(proc, "--max-new-tokens 32768 does not fit builtin:demo_base",
                          "2048 positions", "--max-new-tokens 1024")
    assert not out.exists()
    proc = small_eval(out, "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    # One model: its pass@k table on the console, no boundary comparison.
    assert "pass@k (%)" in proc.stdout and "pass@1 (%) | pass@2 (%)" in proc.stdout
    assert "| all | demo_base | 2 |" in proc.stdout
    assert "| basic_arithmetic | demo_base | 2 |" in proc.stdout
    assert "Reasoning boundary" not in proc.stdout
    assert (out / "samples" / "demo_base.json").is_file()


def test_unusable_out_is_refused_before_anything(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = small_eval(tmp_path / "file", "--max-new-tokens", "8")
    assert_one_line_error(proc, "--out", "file: not a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        proc = small_eval(ro / "out", "--max-new-tokens", "8")
        assert_one_line_error(proc, "--out", "ro is not writable")
        assert list(ro.iterdir()) == []
    finally:
        os.chmod(ro, 0o755)


def test_model_without_tokenizer_is_named_at_load(tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(DEMO_BASE, bare, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    proc = prorl("eval", "--model", str(bare), "--data", DATA, "--n", "2",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, f"{bare} has no tokenizer", "tokenizer.json")
    assert not (tmp_path / "out").exists()


def test_settings_are_written_only_once_samples_are(tmp_path, monkeypatch):
    """A run that fails inside sampling (here: scoring) leaves no settings file, so a rerun
    with other settings into the same --out is not refused."""
    from prorl_jax.eval import runner
    from prorl_jax.eval.data_spec import load_data_spec

    def broken(items):
        raise RuntimeError("scorer down")

    records = load_data_spec(DATA, seed=1234)
    settings = runner.EvalSettings(n=2, max_new_tokens=4, batch_prompts=2)
    monkeypatch.setattr(runner, "_inline_scorer", broken)
    with pytest.raises(RuntimeError, match="scorer down"):
        runner.run_evaluation(["builtin:demo_base"], records, str(tmp_path), settings,
                              reward_workers=0, show_progress=False, log=lambda s: None)
    assert not (tmp_path / "samples" / "demo_base.json").exists()
    monkeypatch.undo()
    other = runner.EvalSettings(n=2, max_new_tokens=4, batch_prompts=2, seed=5)
    report = runner.run_evaluation(["builtin:demo_base"], records, str(tmp_path), other,
                                   reward_workers=0, show_progress=False, log=lambda s: None)
    assert report["models"]["demo_base"]["overall"]["num_prompts"] == 2
    assert '"seed": 5' in (tmp_path / "samples" / "demo_base.json").read_text()
