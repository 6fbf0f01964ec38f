"""`prorl-jax train` as a newcomer meets it, in subprocesses: unusable --run-dir, a damaged
latest checkpoint (one line naming the step and the fallback), and `--resume RUN --step N`."""

import os
import pathlib
import shutil

import pytest
from cli_run import ROOT, assert_one_line_error, prorl, sets

from prorl_jax.checkpoint import complete_steps
from prorl_jax.rl.metrics_log import read_metrics

# Two tiny steps of the demo, a checkpoint after each.
SHORT = ["steps=2", "rl.prompts_per_step=2", "rl.mini_batch_prompts=2", "rl.max_gen_batches=1",
         "validation.every_steps=0", "data.val_sources=[]", "reference_reset.every_steps=0",
         "checkpoint.every_steps=1", "logging.tensorboard=false", "logging.progress=false",
         "checkpoint.export_hf=false"]


def train(*args):
    return prorl("train", *args)


def fake_step(ckpt_dir: pathlib.Path, step: int, items=("params", "state", "meta")):
    """A step directory Orbax would call committed (only its structure is looked at)."""
    d = ckpt_dir / str(step)
    d.mkdir(parents=True)
    (d / "commit_success.txt").write_text("")
    for item in items:
        (d / item).mkdir()
        (d / item / "commit_success.txt").write_text("")


def test_unusable_run_dir_is_refused_before_anything(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = train("--run-dir", str(tmp_path / "file"), "--set", "steps=1")
    assert_one_line_error(proc, "--run-dir", "file: not a directory")
    proc = train("--run-dir", str(tmp_path / "file" / "run"), "--set", "steps=1")
    assert_one_line_error(proc, "--run-dir", "is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        proc = train("--run-dir", str(ro / "run"), "--set", "steps=1")
        assert_one_line_error(proc, "--run-dir", "ro is not writable")
        assert list(ro.iterdir()) == []
    finally:
        os.chmod(ro, 0o755)
    proc = train("--step", "3")
    assert_one_line_error(proc, "--step needs --resume RUN_DIR")


def test_latest_step_without_state_points_at_the_previous_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ROOT / "configs" / "demo.yaml", run / "config.yaml")
    fake_step(run / "checkpoints", 1)
    fake_step(run / "checkpoints", 2, items=("params", "meta"))
    proc = train("--resume", str(run))
    assert_one_line_error(proc, "checkpoint step 2", "has no 'state' item",
                          "previous complete step is 1",
                          f"resume from it with --resume {run} --step 1")
    proc = train("--resume", str(run), "--step", "5")
    assert_one_line_error(proc, "step 5 not found", "(complete steps: [1, 2])")


@pytest.mark.slow
def test_truncated_array_then_resume_from_the_step_before(tmp_path):
    run = tmp_path / "run"
    proc = train("--run-dir", str(run), *sets(SHORT))
    assert proc.returncode == 0, proc.stderr
    assert complete_steps(run / "checkpoints") == [1, 2]
    arrays = [p for p in (run / "checkpoints" / "2" / "state").rglob("*")
              if p.is_file() and p.parent.name == "d"]
    victim = max(arrays, key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 3)
    proc = train("--resume", str(run))
    # One line: no Orbax / asyncio tracebacks around it.
    assert_one_line_error(proc, "checkpoint step 2", "cannot be read",
                          "previous complete step is 1", f"--resume {run} --step 1")
    assert "Exception ignored" not in proc.stderr
    proc = train("--resume", str(run), "--step", "1")
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stdout and "at step 1" in proc.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert complete_steps(run / "checkpoints") == [1, 2]  # step 2 written anew
    proc = train("--resume", str(run), "--set", "steps=3")
    assert proc.returncode == 0, proc.stderr
    assert "at step 2" in proc.stdout
