"""Whole `prorl-jax train` runs in subprocesses, on the shipped demo base model: exact
resume after SIGKILL, a torn checkpoint, SIGTERM (exit 143), the manual reset, and the dry
run."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from prorl_jax.checkpoint import complete_steps
from prorl_jax.rl.metrics_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A few small steps of the demo config: 4 prompts x 8 samples, one mini-batch of 2 prompts
# with 2 micro-batches, so refills, resets and accumulation all run.
SHORT = ["steps=4", "rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.micro_batches=2",
         "rl.max_gen_batches=2", "validation.every_steps=0", "data.val_sources=[]",
         "reference_reset.every_steps=2", "checkpoint.every_steps=2",
         "logging.tensorboard=false", "logging.progress=false", "checkpoint.export_hf=false"]

# Timings differ between runs; everything else must be identical.
NONDETERMINISTIC = ("time/", "tokens_per_second")


def train(args, *, env=None, check=True):
    cmd = [sys.executable, "-m", "prorl_jax", "train", *args]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(NONDETERMINISTIC)} for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(["--run-dir", str(full), *sets(SHORT)])
    # Killed right after step 3 is logged: the last checkpoint is step 2, so the resumed run
    # must drop the logged step 3 and recompute it, and steps 3-4 must match exactly.
    proc = train(["--run-dir", str(killed), *sets(SHORT)],
                 env={"PRORL_JAX_FAULT_AFTER_STEP": "3:KILL"}, check=False)
    assert proc.returncode == -9
    assert [r["step"] for r in read_metrics(killed)] == [1, 2, 3]
    assert complete_steps(killed / "checkpoints") == [2]
    train(["--resume", str(killed)])
    a, b = read_metrics(full), read_metrics(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert comparable(a) == comparable(b)
    # The run really trained: groups were kept and updates happened, so equality is not
    # the trivial equality of two runs that did nothing.
    assert sum(r["groups/kept"] for r in a) > 0 and all("pg_loss" in r for r in a if r["groups/kept"])
    assert [r.get("reference_reset", False) for r in a] == [False, True, False, False]
    assert (full / "pre_reset" / "2").is_dir()


@pytest.mark.slow
def test_torn_checkpoint_is_never_the_latest_and_sigterm_saves(tmp_path):
    run = tmp_path / "run"
    proc = train(["--run-dir", str(run), *sets(SHORT), "--set", "checkpoint.every_steps=0"],
                 env={"PRORL_JAX_FAULT_AFTER_STEP": "1:TERM"}, check=False)
    # 128 + 15: a scheduler tells a preempted run (saved, resumable) from a finished one.
    assert proc.returncode == 143, proc.stderr
    assert "stopped by SIGTERM at step 1" in proc.stdout
    assert complete_steps(run / "checkpoints") == [1]
    # A later step torn mid-write: its directory exists but Orbax never committed it.
    torn = run / "checkpoints" / "3"
    shutil.copytree(run / "checkpoints" / "1", torn)
    (torn / "commit_success.txt").unlink()
    assert complete_steps(run / "checkpoints") == [1]
    proc = train(["--resume", str(run), "--reset-reference", "--set", "steps=2"])
    assert "resumed" in proc.stdout and "at step 1" in proc.stdout
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert (run / "pre_reset" / "1").is_dir()  # the manual reset saved its snapshot first


def test_dry_run_for_the_paper_config_on_this_cpu():
    proc = train(["--config", "prorl_1.5b", "--dry-run"])
    out = proc.stdout
    assert "1,777,088,000 parameters" in out  # DeepSeek-R1-Distill-Qwen-1.5B, untied head
    assert "data=4 fsdp=8 tensor=1 (32 devices)" in out
    assert "256 prompts x n=16 = 4096" in out
    for part in ("params", "optimizer_state", "reference", "activations", "kv_cache", "peak",
                 "attention (auto, flash)", "chunked logits", "bound by"):
        assert part in out
    # The 16k stage with dense attention: the [T, S] scores bound the peak.
    dense = train(["--config", "prorl_1.5b", "--dry-run", "--set", "sampling.max_new_tokens=16384",
                   "--set", "model.attention_impl=dense"]).stdout
    assert "bound by update: attention (dense, dense)" in dense


def test_refuses_to_overwrite_a_run(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "5"
    ckpt.mkdir(parents=True)
    (ckpt / "commit_success.txt").write_text("")
    (ckpt / "params").mkdir()
    (ckpt / "params" / "commit_success.txt").write_text("")
    proc = train(["--run-dir", str(tmp_path / "run"), "--set", "steps=1"], check=False)
    assert proc.returncode == 2
    assert "already holds checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert complete_steps(tmp_path / "run" / "checkpoints") == [5]
