"""The continuous engine in the trainer: the demo run's metrics equal the static engine's,
and multi-step runs compile no more sampler programs than the structural bound, which
does not grow with the steps (runs on other data meet other lengths, and stay within it).

All runs are in this process, on the shipped demo config cut to two short steps (in CI
this replaced two `prorl-jax train` subprocesses and a six-step run: ~8 min -> 53 s wall
on an idle 2-core box)."""

import pytest
from float32_tolerance import LOGP_MISMATCH_MAX

from prorl_jax.config import load_config, resolve_config_path
from prorl_jax.rl.metrics_log import read_metrics

# Two short steps of the shipped demo config (its model, task, sampling and seeds).
SHORT = ["steps=2", "rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.max_gen_batches=2",
         "validation.every_steps=0", "data.val_sources=[]", "checkpoint.every_steps=0",
         "logging.tensorboard=false", "logging.progress=false", "checkpoint.export_hf=false",
         "rewards.num_workers=1"]
NONDETERMINISTIC = ("time/", "tokens_per_second")
MISMATCH = "logp_mismatch/"
SLOTS = 4  # 4 prompts x n=8 = 32 rows per generation batch: many refills and a tail


def _train(run_dir, overrides):
    from prorl_jax.rl.trainer import Trainer

    cfg = load_config(resolve_config_path("demo"), SHORT + overrides)
    Trainer(cfg, run_dir, console=lambda *a, **k: None).run()
    return cfg, [{k: v for k, v in r.items() if not k.startswith(NONDETERMINISTIC)}
                 for r in read_metrics(run_dir)]


def _sampler_programs():
    from prorl_jax.sampling import engine

    return (engine._prefill, engine._insert, engine._decode_block, engine._compact,
            engine._empty_slots, engine._layout_params)


def _programs():
    return {f.__name__: f._cache_size() for f in _sampler_programs()}


@pytest.mark.slow
def test_demo_metrics_do_not_depend_on_the_engine_and_programs_stay_bounded(tmp_path):
    from prorl_jax.sampling import engine, sampler

    # Compiled-program caches are per process: start from empty ones, so the counts
    # below do not depend on which tests ran before in this process (pytest-xdist).
    for f in _sampler_programs():
        f.clear_cache()
    _, static = _train(tmp_path / "static", ["sampling.engine=static"])
    before = _programs()  # the static run compiled the layout program already
    cont = ["sampling.engine=continuous", f"sampling.decode_slots={SLOTS}",
            "sampling.steps_per_sync=2"]
    cfg, continuous = _train(tmp_path / "continuous", cont)
    assert [r["step"] for r in static if "reward/mean" in r] == [1, 2]
    # Same seeds, same samples: every metric equal, except the logged rollout/trainer
    # mismatch: the engines' rollout logprobs agree up to float rounding
    # (sampling/engine.py), so it differs in its last digits (training does not use them,
    # rl.old_logprobs: recompute).
    split = lambda rows: ([{k: v for k, v in r.items() if not k.startswith(MISMATCH)}  # noqa: E731
                           for r in rows],
                          [v for r in rows for k, v in r.items() if k == MISMATCH + "max"])
    (rest_c, max_c), (rest_s, max_s) = split(continuous), split(static)
    assert rest_c == rest_s
    assert len(max_c) == len(max_s) == 2 and max(max_c + max_s) <= LOGP_MISMATCH_MAX

    # Another run on other prompts and samples (another seed): its step meets other
    # lengths, and still every program count stays within the structural bound, which
    # does not grow with the steps.
    _train(tmp_path / "other", cont + ["seed=1", "data.seed=1", "steps=1"])
    counts = {k: v - before[k] for k, v in _programs().items()}
    # Per prompt bucket (these prompts fall in at most two): one empty state; prefill /
    # insert per prefill-group size (4 slots at n=8: groups of the 2-prompt bucket only);
    # decode blocks per window (8 new tokens: one) and slot count in tail_sizes(4);
    # compaction per (slot count, smaller slot count). The layout program: none new.
    sizes = len(engine.tail_sizes(SLOTS))
    assert sampler.bucket(-(-SLOTS // cfg.sampling.n), 2) == 2
    buckets = 2
    assert counts["_layout_params"] == 0
    assert 1 <= counts["_empty_slots"] <= buckets
    assert 1 <= counts["_prefill"] <= buckets and 1 <= counts["_insert"] <= buckets
    assert 1 <= counts["_decode_block"] <= buckets * sizes
    assert counts["_compact"] <= buckets * sizes * (sizes - 1) // 2
