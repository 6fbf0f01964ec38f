"""Trainer construction: random-init training with a named tokenizer, the checks before
anything is written, and resuming checkpoints written before TrainState lost its rng."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax.errors import ConfigError
from prorl_jax.rl.metrics_log import read_metrics
from prorl_jax.rl.trainer import Trainer

TINY_ARCH = {"vocab_size": 264, "hidden_size": 16, "intermediate_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "tie_word_embeddings": True}


@pytest.mark.slow  # compiles the sampler and a train step: ~1-2 min on a loaded 2-core box
def test_random_init_with_a_named_tokenizer_trains(tiny_model_dir, make_config, tmp_path):
    # No dynamic sampling: the random policy's groups all score 0, and the step must update.
    cfg = make_config(tiny_model_dir, steps=1, rl={"dynamic_sampling": False},
                      model={"path": None, "config": TINY_ARCH, "tokenizer": str(tiny_model_dir)})
    trainer = Trainer(cfg, tmp_path / "run", console=lambda *a: None)
    try:
        assert trainer.model_cfg.hidden_size == 16 and trainer.model_cfg.vocab_size == 264
        assert trainer.state.params["embed"]["embedding"].shape == (264, 16)
        assert trainer.stop_ids == (trainer.tokenizer.eos_token_id,)
        before = jax.tree.map(np.asarray, trainer.state.params)
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["steps"] == 1
    (row,) = read_metrics(tmp_path / "run")
    assert "pg_loss" in row and row["skipped"] == 0
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before,
                           trainer.state.params)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("model, msg", [
    ({"path": None, "config": TINY_ARCH}, "model.tokenizer: a random init"),
    ({"path": None, "config": {**TINY_ARCH, "vocab_size": 100}, "tokenizer": "TOK"},
     "more than the model's vocab_size 100"),
])
def test_random_init_errors_before_writing(tiny_model_dir, make_config, tmp_path, model, msg):
    model = {k: (str(tiny_model_dir) if v == "TOK" else v) for k, v in model.items()}
    with pytest.raises(ConfigError, match=msg):
        Trainer(make_config(tiny_model_dir, model=model), tmp_path / "run")
    if "tokenizer" not in model:
        assert not (tmp_path / "run").exists()


def test_tokenizer_with_path_is_rejected(tiny_model_dir, make_config):
    with pytest.raises(ConfigError, match="brings its own tokenizer"):
        make_config(tiny_model_dir, model={"tokenizer": str(tiny_model_dir)})


def test_resumes_a_checkpoint_that_still_holds_an_rng(tiny_model_dir, make_config, tmp_path):
    cfg = make_config(tiny_model_dir)
    trainer = Trainer(cfg, tmp_path / "run", console=lambda *a: None)
    params, rest = trainer._split_state()
    # The layout of checkpoints written while TrainState had an (unused) PRNG key.
    legacy = {**rest, "rng": jax.random.key_data(jax.random.key(0)), "step": jnp.int32(3)}
    trainer.counters.resets.append({"step": 2, "reason": "test"})
    trainer.ckpt.save(3, params, legacy, trainer._meta())
    trainer.close()
    resumed = Trainer(cfg, tmp_path / "run", resume=True, console=lambda *a: None)
    try:
        assert int(resumed.state.step) == 3
        assert resumed.counters.resets == [{"step": 2, "reason": "test"}]
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed.state.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    finally:
        resumed.close()


def test_reset_due_is_a_predicate_and_the_caller_keeps_the_kl_streak(tiny_model_dir, make_config):
    import copy

    from prorl_jax.rl.trainer import Counters

    trainer = Trainer.__new__(Trainer)  # only the config and counters: no model needed
    trainer.cfg = make_config(tiny_model_dir, steps=100,
                              reference_reset={"kl_fraction": 0.5, "kl_patience": 2})
    trainer.counters = Counters()
    dominated = {"kl": 10.0, "pg_loss": 1e-3}  # kl_coef 1e-2 * 10 > 0.5 * 1e-3
    calm = {"kl": 0.0, "pg_loss": 1.0}
    before = copy.deepcopy(trainer.counters)
    assert trainer._reset_due(1, dominated) is None
    assert trainer.counters == before  # asking changes nothing
    reasons = []
    for step, m in enumerate([dominated, calm, dominated, dominated], start=1):
        trainer.counters.kl_streak = trainer._kl_streak_after(m)
        reasons.append(trainer._reset_due(step, m))
    assert trainer.counters.kl_streak == 2
    assert reasons[:3] == [None, None, None] and "KL term above 0.5" in reasons[3]
    assert trainer._kl_streak_after({}) == 2  # a step without KL leaves the streak alone
