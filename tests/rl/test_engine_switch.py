"""The continuous engine in the trainer: the demo run's metrics equal the static engine's,
and a multi-step run compiles a bounded set of sampler programs that later steps reuse."""

import os
import pathlib
import subprocess
import sys

import pytest

from prorl_jax.rl.metrics_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Two short steps of the shipped demo config (test_train_run.py's shape).
SHORT = ["steps=2", "rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.max_gen_batches=2",
         "validation.every_steps=0", "data.val_sources=[]", "checkpoint.every_steps=0",
         "logging.tensorboard=false", "logging.progress=false", "checkpoint.export_hf=false"]
NONDETERMINISTIC = ("time/", "tokens_per_second")
MISMATCH = "logp_mismatch/"


def _run(run_dir, overrides):
    cmd = [sys.executable, "-m", "prorl_jax", "train", "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [{k: v for k, v in r.items() if not k.startswith(NONDETERMINISTIC)}
            for r in read_metrics(run_dir)]


@pytest.mark.slow
def test_demo_metrics_do_not_depend_on_the_engine(tmp_path):
    static = _run(tmp_path / "static", SHORT + ["sampling.engine=static"])
    continuous = _run(tmp_path / "continuous", SHORT + ["sampling.engine=continuous",
                                                        "sampling.decode_slots=8"])
    assert [r["step"] for r in static if "reward/mean" in r] == [1, 2]
    # The engines' rollout logprobs agree up to float rounding (sampling/engine.py), so the
    # logged rollout/trainer mismatch differs in its last digits; the training does not
    # use them (rl.old_logprobs: recompute) and every other metric is identical.
    split = lambda rows: ([{k: v for k, v in r.items() if not k.startswith(MISMATCH)}  # noqa: E731
                           for r in rows],
                          [v for r in rows for k, v in r.items() if k == MISMATCH + "max"])
    (rest_c, max_c), (rest_s, max_s) = split(continuous), split(static)
    assert rest_c == rest_s
    assert len(max_c) == len(max_s) == 2 and max(max_c + max_s) <= 1e-5


def _programs():
    from prorl_jax.sampling import engine

    return {f.__name__: f._cache_size() for f in (engine._prefill, engine._insert,
                                                   engine._decode_block, engine._compact,
                                                   engine._empty_slots, engine._layout_params)}


@pytest.mark.slow
def test_trainer_steps_reuse_a_bounded_set_of_sampler_programs(tmp_path, tiny_model_dir,
                                                                make_config):
    from prorl_jax.rl.trainer import Trainer

    before = _programs()
    counts = []
    for steps in (2, 4):
        cfg = make_config(tiny_model_dir, steps=steps,
                          sampling={"decode_slots": 4, "steps_per_sync": 2},
                          checkpoint={"every_steps": 0})
        Trainer(cfg, tmp_path / f"run{steps}", console=lambda *a, **k: None).run()
        counts.append({k: v - before[k] for k, v in _programs().items()})
    # Steps 3 and 4 (and a second trainer) compile nothing new ...
    assert counts[1] == counts[0]
    # ... and the first two compiled a handful: one empty-state and one layout program,
    # prefill / insert per prefill-group size (1 prompt covers the 4 slots at n=4, so the
    # 2-prompt bucket only), decode blocks per window (6 new tokens: one window) and slot
    # count (4, then 2 and 1 at the tail), compaction per slot count, each per prompt
    # bucket (these prompts fall in at most two).
    assert counts[0]["_empty_slots"] <= 2 and counts[0]["_layout_params"] == 1
    assert counts[0]["_decode_block"] <= 2 * 3 and counts[0]["_compact"] <= 2 * 2
    assert counts[0]["_prefill"] <= 2 and counts[0]["_insert"] <= 2
