"""A shortened `prorl-jax train` demo (the README's main command) must learn."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from float32_tolerance import LOGP_MISMATCH_MAX

ROOT = pathlib.Path(__file__).resolve().parents[2]


def train_demo(run: pathlib.Path, sets: list[str]):
    """`prorl-jax train` on the demo config with overrides; (stdout, metric rows, summary)."""
    cmd = [sys.executable, "-m", "prorl_jax", "train", "--run-dir", str(run)]
    for s in [*sets, "logging.progress=false"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return proc.stdout, rows, summary


@pytest.mark.slow
def test_shortened_demo_improves_reward(tmp_path):
    run = tmp_path / "demo"
    # The demo config with 16 steps instead of 40 (reset at step 8), validation only before
    # and after, on 120 held-out prompts x 4 samples; the boundary report on 32 x 16.
    stdout, rows, summary = train_demo(run, [
        "steps=16", "reference_reset.every_steps=8", "checkpoint.every_steps=8",
        "validation.every_steps=0", "validation.num_prompts=120", "boundary.num_prompts=32",
        "boundary.n=16"])
    before = rows[0]["val/pass@1"]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))
    rewards = np.array([r["reward/mean"] for r in steps])
    # Training reward (every sample generated, before filtering) rises on average ...
    assert rewards[8:].mean() > rewards[:8].mean() + 0.03, rewards
    # ... and so does held-out pass@1, printed in the before/after summary.
    assert "pass@1" in stdout and "before" in stdout
    assert summary["val_before"]["val/pass@1"] == before
    after = summary["val_after"]["val/pass@1"]
    assert after > before + 0.08, (before, after)
    # Every feature ran: filtering, a reset, checkpoints, the HF export.
    assert any(r["filtered_fraction"] > 0 for r in steps)
    assert [r["step"] for r in steps if r.get("reference_reset")] == [8]
    assert (run / "pre_reset" / "8").is_dir() and (run / "hf" / "model.safetensors").is_file()
    # recompute (the default) logs the rollout/trainer mismatch over every token.
    assert all(r["logp_mismatch/max"] <= LOGP_MISMATCH_MAX for r in steps if r["groups/kept"])
    # The boundary report: base sampled before step 1, final after step 16, same prompts; no
    # held-out prompt in the RL data (left out by text) or the base's warm-up data.
    b = summary["boundary"]
    assert b["num_prompts"] == 32 and sum(b["verdicts"].values()) == 32
    assert b["overlap"] == {"held_out_prompts": 32, "rl_training": 0, "warmup": 0}
    assert sum(b["excluded_from_training"].values()) > 0  # arithmetic questions repeat
    assert 0 <= b["now_solved"] <= b["base_unsolved"]
    assert b["pass@1"][0] <= b["pass@16"][0] and b["pass@1"][1] <= b["pass@16"][1]
    report = run / "boundary"
    results = json.loads((report / "results.json").read_text())
    assert results["ks"] == [1, 2, 4, 8, 16] and len(results["prompts"]) == 32
    assert (report / "plots" / "prompt_scatter.png").is_file()
    assert f"tries are now solved; report: {report / 'report.md'}" in stdout
    base = [json.loads(x) for x in (report / "samples" / "base.jsonl").read_text().splitlines()]
    assert len(base) == 32 and all(len(r["rewards"]) == 16 for r in base)


@pytest.mark.slow  # ~60 s on 2 quiet cores (70 s of CPU)
def test_demo_with_sampler_logprobs_learns(tmp_path):
    """rl.old_logprobs=sampler (no old-logprob pass): 8 demo steps, validation on 64
    held-out prompts before and after; reward and pass@1 rise, the mismatch stays <= 1e-5."""
    stdout, rows, summary = train_demo(tmp_path / "demo", [
        "steps=8", "rl.old_logprobs=sampler", "reference_reset.every_steps=0",
        "checkpoint.every_steps=0", "checkpoint.export_hf=false", "logging.tensorboard=false",
        "validation.every_steps=0", "validation.num_prompts=64", "boundary.num_prompts=0"])
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert "boundary" not in summary and not (tmp_path / "demo" / "boundary").exists()
    rewards = np.array([r["reward/mean"] for r in steps])
    assert rewards[4:].mean() > rewards[:4].mean() + 0.03, rewards
    before, after = summary["val_before"]["val/pass@1"], summary["val_after"]["val/pass@1"]
    assert after > before + 0.08, (before, after)
    trained = [r for r in steps if r["groups/kept"]]
    assert trained and all(r["logp_mismatch/max"] <= LOGP_MISMATCH_MAX for r in trained)
    assert all(0 <= r["logp_mismatch/mean"] <= r["logp_mismatch/max"] for r in trained)
    assert all("entropy" not in r for r in trained)  # it came from the skipped pass
