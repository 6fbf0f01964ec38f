"""`prorl-jax train` as a newcomer meets it (issue 11): mistakes are one line and exit 2
with nothing written, resumes never lose the last good config or the base validation,
signals give distinct exit codes, and the console output stays readable."""

import functools
import json
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
from cli_run import ROOT, assert_one_line_error, prorl, sets

from prorl_jax.checkpoint import complete_steps
from prorl_jax.rl.metrics_log import read_metrics

DEMO_BASE = ROOT / "prorl_jax" / "assets" / "demo_base"
assert_train_error = functools.partial(assert_one_line_error, command="train",
                                       after_warnings=True)

# Two tiny steps of the demo config: 2 prompts x 8 samples, one generation batch, a reset
# after step 1, validation on 4 held-out prompts before and after.
TINY = ["steps=2", "rl.prompts_per_step=2", "rl.mini_batch_prompts=2", "rl.max_gen_batches=1",
        "validation.every_steps=0", "validation.num_prompts=4", "validation.n=2",
        "reference_reset.every_steps=1", "checkpoint.every_steps=1", "rewards.num_workers=1",
        "checkpoint.export_hf=false", "boundary.num_prompts=0"]


def fake_run(path: pathlib.Path, config_text: str) -> pathlib.Path:
    """A run directory with a config and a checkpoint that passes the completeness test."""
    from prorl_jax.checkpoint import ITEMS

    ckpt = path / "checkpoints" / "5"
    (ckpt / "commit_success.txt").parent.mkdir(parents=True)
    (ckpt / "commit_success.txt").write_text("")
    for item in ITEMS:  # every item present, so the step is not reported as damaged
        (ckpt / item).mkdir()
        (ckpt / item / "commit_success.txt").write_text("")
    (path / "config.yaml").write_text(config_text)
    return path


# ----------------------------------------------------------------- refused before any work


def test_resume_refuses_config(tmp_path):
    run = fake_run(tmp_path / "run", "steps: 3\n")
    proc = prorl("train", "--resume", run, "--config", "demo")
    assert_train_error(proc, f"--resume {run} trains with {run / 'config.yaml'}",
                          "--config cannot be combined")
    proc = prorl("train", "--resume", run, "--run-dir", tmp_path / "other")
    assert_train_error(proc, "drop --run-dir")


def test_negative_kl_coef_and_group_of_one_are_refused():
    assert_train_error(prorl("train", "--set", "rl.kl_coef=-0.1", "--dry-run"),
                          "rl.kl_coef must be >= 0")
    # With dynamic sampling off too: a group of one has no GRPO advantage.
    proc = prorl("train", "--set", "sampling.n=1", "--set", "rl.dynamic_sampling=false",
                 "--dry-run")
    assert_train_error(proc, "sampling.n must be >= 2, got 1")


def test_set_mapping_merges_into_the_section():
    proc = prorl("train", "--set", "rl={kl_coef: 0.1}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    # Every other rl key keeps the demo's value (16 prompts per step, not the default 256).
    assert "16 prompts x n=8 = 128" in proc.stdout and "KL low_var_kl x 0.1" in proc.stdout


def test_eval_threshold_above_one_is_refused(tmp_path):
    proc = prorl("eval", "--model", "builtin:demo_base", "--data", "x.jsonl",
                 "--threshold", "1.5", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--threshold must be in (0, 1]" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- start-up checks, nothing written


def test_response_budget_beyond_model_positions_fails_at_start(tmp_path):
    run = tmp_path / "run"
    proc = prorl("train", "--run-dir", run, "--set", "sampling.max_new_tokens=4000")
    assert_train_error(proc, "sampling.max_prompt_tokens (64) + sampling.max_new_tokens "
                                "(4000) = 4064 exceeds the model's max_position_embeddings (2048)")
    assert not run.exists()
    proc = prorl("train", "--run-dir", run, "--set", "boundary.max_new_tokens=1990")
    assert_train_error(proc, "sampling.max_prompt_tokens (64) + boundary.max_new_tokens "
                                "(1990) = 2054 exceeds the model's max_position_embeddings (2048)")
    assert not run.exists()


def test_boundary_prompts_over_the_prompt_budget_fail_at_start(tmp_path):
    run = tmp_path / "run"
    proc = prorl("train", "--run-dir", run, "--set", "sampling.max_prompt_tokens=40")
    assert_train_error(proc, "boundary.num_prompts: 64 of the first 64 held-out prompts are "
                             "longer than sampling.max_prompt_tokens (40)")
    assert not run.exists()


def test_broken_chat_template_fails_at_start_and_leaves_no_run_dir(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO_BASE, model)
    (model / "chat_template.jinja").write_text("{% if messages %}never closed")
    proc = prorl("train", "--set", f"model.path={model}", cwd=tmp_path)
    assert_train_error(proc, "the tokenizer's chat template cannot be rendered",
                          "data.use_chat_template=false")
    assert not (tmp_path / "runs").exists()  # the default runs/demo-<time> was never made


def test_bad_override_on_resume_keeps_the_last_good_config(tmp_path):
    good = "steps: 3\nmodel:\n  path: builtin:demo_base\n"
    run = fake_run(tmp_path / "run", good)
    proc = prorl("train", "--resume", run, "--set", f"model.path={tmp_path / 'missing'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(tmp_path / "missing") in proc.stderr
    assert (run / "config.yaml").read_text() == good


def test_failed_start_cleanup_keeps_anything_of_value(tmp_path):
    from prorl_jax.rl.train_cli import _discard_failed_start

    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text("steps: 1\n")
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 0, "val/pass@1": 0.2}) + "\n")
    _discard_failed_start(empty)
    assert not empty.exists()
    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.1}) + "\n")
    _discard_failed_start(logged)
    assert (logged / "metrics.jsonl").is_file()
    saved = fake_run(tmp_path / "saved", "steps: 1\n")
    _discard_failed_start(saved)
    assert complete_steps(saved / "checkpoints") == [5]


def test_chat_template_check_names_a_missing_jinja2():
    from prorl_jax.errors import ConfigError
    from prorl_jax.rl.startup import check_chat_template

    class Tok:
        def apply_chat_template(self, *a, **k):
            raise ImportError("apply_chat_template requires jinja2 to be installed")

    class Fmt:
        use_chat_template = True
        tokenizer = Tok()

    with pytest.raises(ConfigError, match="requires jinja2"):
        check_chat_template(Fmt(), "m")


def test_transformers_no_torch_banner_is_filtered(capsys):
    import logging

    from prorl_jax import cli

    cli.main(["train", "--config", "/nonexistent.yaml", "--dry-run"])
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("PyTorch was not found. Models won't be available ...")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


# ----------------------------------------------------------------- whole runs


def tensorboard_tags(directory: pathlib.Path) -> set[str]:
    """Scalar tags in the TFRecord event files under `directory`."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in directory.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + length + 4
    return tags


@pytest.mark.slow
def test_run_logs_final_validation_then_resume_of_finished_run_changes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = prorl("train", "--run-dir", run, *sets([*TINY, "boundary.num_prompts=4",
                                                   "boundary.n=2"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["boundary"]["num_prompts"] == 4 and "tries are now solved" in proc.stdout
    base_samples = (run / "boundary" / "samples" / "base.jsonl").read_bytes()
    # The final validation is the last step's row (and TensorBoard), not only summary.json.
    assert summary["val_after"] == {k: v for k, v in rows[-1].items() if k.startswith("val/")}
    assert "val/pass@1" in summary["val_after"]
    tags = tensorboard_tags(run / "tensorboard")
    assert {"val/pass_at_1", "val/reward/mean", "reward/mean"} <= tags
    assert not any("@" in t or t.startswith("val/pass_1") for t in tags)
    # The summary prints pass@1 and the mean reward, each once.
    out = proc.stdout.splitlines()
    assert "held-out validation, before -> after training:" in out
    assert sum(line.split()[0] == "pass@1" for line in out if line.startswith("  ")) == 1
    assert sum(line.split()[0] == "reward/mean" for line in out if line.startswith("  ")) == 1
    # The reset's log line is a line of its own, not glued to the progress bar.
    segments = proc.stderr.replace("\r", "\n").splitlines()
    reset = [s for s in segments if "reference reset at step 1" in s]
    assert reset and not any("ProRL" in s for s in reset), reset

    before = (run / "summary.json").read_bytes()
    proc = prorl("train", "--resume", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already finished at step 2" in proc.stdout and "--set steps=N" in proc.stdout
    assert (run / "summary.json").read_bytes() == before

    # Other boundary settings than the base samples were made with: refused before anything
    # is written (the comparison would be meaningless).
    config_before = (run / "config.yaml").read_bytes()
    proc = prorl("train", "--resume", run, "--set", "steps=3", "--set", "boundary.n=4")
    assert_train_error(proc, "boundary.n: ")
    assert "n=2, not 4" in proc.stderr
    assert (run / "config.yaml").read_bytes() == config_before

    # Extended by one step: the base model's validation survives into the new summary, and
    # the boundary report compares the new final policy with the same base samples.
    proc = prorl("train", "--resume", run, "--set", "steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    extended = json.loads((run / "summary.json").read_text())
    assert extended["steps"] == 3 and extended["start_step"] == 0
    assert extended["val_before"] == summary["val_before"]
    assert (run / "boundary" / "samples" / "base.jsonl").read_bytes() == base_samples
    assert extended["boundary"]["pass@1"][0] == summary["boundary"]["pass@1"][0]
    assert "val/pass@1" in read_metrics(run)[-1]


@pytest.mark.slow
def test_steps_with_nothing_to_learn_warn_and_stop(tmp_path):
    run = tmp_path / "run"
    # Greedy sampling: the 8 samples of a prompt are identical, so every group is constant.
    proc = prorl("train", "--run-dir", run, *sets(TINY), "--set", "sampling.temperature=0",
                 "--set", "data.val_sources=[]", "--set", "steps=5",
                 "--set", "rl.max_empty_steps=2", "--set", "logging.progress=false")
    assert_train_error(proc, "steps 1-2: every generated group got identical rewards",
                          "rl.max_empty_steps=2")
    assert "step 1: all 2 generated groups got identical rewards" in proc.stderr
    assert "step 2: all 2 generated groups got identical rewards" in proc.stderr
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1] and rows[0]["empty_step"] is True
    assert complete_steps(run / "checkpoints") == [1]  # what was saved stays


@pytest.mark.slow
def test_empty_steps_are_counted_in_the_summary_when_only_warned(tmp_path):
    run = tmp_path / "run"
    proc = prorl("train", "--run-dir", run, *sets(TINY), "--set", "sampling.temperature=0",
                 "--set", "data.val_sources=[]", "--set", "rl.max_empty_steps=0",
                 "--set", "logging.progress=false", "--set", "steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["empty_steps"] == 1
    assert "warning: 1 step(s) had nothing to learn from" in proc.stdout


@pytest.mark.slow
def test_double_ctrl_c_exits_130_without_a_crash(tmp_path):
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "prorl_jax", "train", "--run-dir", str(run), *sets(TINY),
           "--set", "data.val_sources=[]"]
    with err.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
        deadline = time.monotonic() + 300
        # The progress bar appears when the loop starts; the first step then compiles.
        while "ProRL" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    text = err.read_text()
    assert proc.returncode == 130, (proc.returncode, text[-3000:])
    assert "second signal (SIGINT): exiting now without saving" in text
    assert "Segmentation" not in text and "Traceback" not in text
