"""rl.old_logprobs / rl.tis_cap: the sampler's logprobs are the trainer's old logprobs (one
graph, checked here for both engines and both batch layouts), the mismatch and truncated
importance-sampling math against hand-computed values, the config checks, and one trainer
update in each mode on the same rollout."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from float32_tolerance import LOGP_MISMATCH_MAX

from prorl_jax import losses
from prorl_jax.config import load_config, resolve_config_path
from prorl_jax.errors import ConfigError
from prorl_jax.rl import batch as batching
from prorl_jax.rl import old_logprobs
from prorl_jax.rl.rollout import Groups

# ----------------------------------------------------------------------------- config


def _demo(*overrides):
    return load_config(resolve_config_path("demo"), list(overrides))


@pytest.mark.parametrize("sets, words", [
    (["rl.old_logprobs=cached"], "rl.old_logprobs"),
    (["rl.tis_cap=-1"], "rl.tis_cap"),
    (["rl.old_logprobs=sampler", "rl.tis_cap=2"], "rl.tis_cap needs rl.old_logprobs: recompute"),
])
def test_config_rejects(sets, words):
    with pytest.raises(ConfigError, match=words):
        _demo(*sets)


def test_config_defaults():
    rl = _demo().rl
    assert rl.old_logprobs == "recompute" and not rl.tis_cap
    assert _demo("rl.old_logprobs=sampler", "rl.tis_cap=0").rl.old_logprobs == "sampler"


# ----------------------------------------------------------------------------- the math


def test_tis_weights_hand_computed():
    old = np.array([[-1.0, -2.0, -0.5, -3.0]], np.float32)
    sampler = np.array([[-1.5, -1.0, -0.5, np.nan]], np.float32)  # last: masked
    mask = np.array([[1, 1, 1, 0]])
    w = np.asarray(losses.tis_weights(old, sampler, 1.5, mask))
    # exp(0.5) = 1.6487 -> capped at 1.5; exp(-1) = 0.36788; exp(0) = 1; masked -> 0.
    np.testing.assert_allclose(w, [[1.5, math.exp(-1.0), 1.0, 0.0]], rtol=1e-6)
    w = np.asarray(losses.tis_weights(old, sampler, 2.0, mask))
    np.testing.assert_allclose(w, [[math.exp(0.5), math.exp(-1.0), 1.0, 0.0]], rtol=1e-6)


def test_tis_scales_each_policy_term():
    # logp == old: ratio 1, no clip, so token t's term is -A * w_t; token-mean over 3 tokens.
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    adv = jnp.array([2.0])
    mask = jnp.ones((1, 3))
    w = jnp.array([[1.5, 0.25, 1.0]])
    loss, _ = losses.policy_loss(logp, logp, adv, mask, tis=w)
    assert float(loss) == pytest.approx(-2.0 * (1.5 + 0.25 + 1.0) / 3, rel=1e-6)
    plain, _ = losses.policy_loss(logp, logp, adv, mask)
    assert float(plain) == pytest.approx(-2.0, rel=1e-6)
    # The gradient of token t is scaled by w_t (d/dlogp of -A r = -A r = -A at r = 1).
    g = jax.grad(lambda lp: losses.policy_loss(lp, logp, adv, mask, tis=w)[0])(logp)
    np.testing.assert_allclose(np.asarray(g), -2.0 * np.asarray(w) / 3, rtol=1e-6)
    # The weighted (packed) form gives the same.
    wl, _ = losses.weighted_grpo_loss(logp, logp, None, jnp.broadcast_to(adv[:, None], (1, 3)),
                                      mask, jnp.full((1, 3), 1 / 3), 1 / 3, tis=w)
    assert float(wl) == pytest.approx(float(loss), rel=1e-6)


def test_logprob_mismatch_hand_computed():
    a = np.array([[-1.0, -2.0, -0.5], [-0.1, 5.0, 0.0]], np.float32)
    b = np.array([[-1.25, -2.0, -1.5], [-0.1, np.inf, 0.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    s = {k: float(v) for k, v in losses.logprob_mismatch(a, b, mask).items()}
    assert s["count"] == 4
    assert s["abs_sum"] == pytest.approx(0.25 + 0 + 1.0 + 0, rel=1e-6)
    assert s["abs_max"] == pytest.approx(1.0)
    assert s["exp_sum"] == pytest.approx(math.exp(0.25) + 1 + math.e + 1, rel=1e-6)
    m = old_logprobs.from_sums([s, s])
    assert m["logp_mismatch/mean"] == pytest.approx(1.25 / 4)
    assert m["logp_mismatch/max"] == pytest.approx(1.0)
    assert m["logp_mismatch/mult_prob_error"] == pytest.approx((math.exp(0.25) + 2 + math.e) / 4)


# ----------------------------------------------------------------------------- one graph


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from prorl_jax.model import hf

    return hf.load_hf(str(tiny_model_dir))


@pytest.mark.parametrize("engine", ["static", "continuous"])
def test_sampler_logprobs_equal_trainer_recompute(tiny, engine):
    """The rollout's logprobs, laid into both train-batch layouts, equal the trainer's
    recomputed old logprobs within 1e-5 (float32). top-k / top-p are on: the sampler must
    report the full temperature-scaled distribution, as the trainer computes it."""
    from prorl_jax.rl.update import batch_logprobs, batch_packed_logprobs
    from prorl_jax.sampling import SamplingParams
    from prorl_jax.sampling.engine import generate

    model_cfg, params = tiny
    rng = np.random.default_rng(0)
    G, n, R, temp = 3, 4, 10, 0.7
    prompts = [list(rng.integers(3, model_cfg.vocab_size, int(k))) for k in (5, 9, 3)]
    sp = SamplingParams(temperature=temp, top_p=0.9, top_k=20, max_new_tokens=R, n=n,
                        stop_token_ids=(model_cfg.eos_token_id,))
    out = generate(model_cfg, params, prompts, sp, seed=3, engine=engine)
    groups = Groups(records=[{}] * G, prompt_ids=prompts, tokens=np.asarray(out.tokens),
                    lengths=np.asarray(out.lengths), finished=np.asarray(out.finished),
                    texts=[""] * (G * n), scores=np.zeros(G * n, np.float32),
                    rewards=rng.integers(0, 2, G * n).astype(np.float32),
                    logprobs=np.asarray(out.logprobs))
    assert groups.lengths.sum() > 2 * G * n  # real responses, not only stop tokens
    for packed in (False, True):
        cfg = load_config(resolve_config_path("demo"), [
            f"rl.prompts_per_step={G}", "rl.mini_batch_prompts=1", f"sampling.n={n}",
            f"sampling.max_new_tokens={R}", "sampling.max_prompt_tokens=16",
            f"sampling.temperature={temp}", f"rl.pack_sequences={str(packed).lower()}"])
        tb = batching.train_batch(cfg, groups, np.arange(G), pad_id=0)
        for micros in tb.minibatches:
            for mb in micros:
                if packed:
                    want = batch_packed_logprobs(model_cfg, params, mb["tokens"],
                                                 mb["segment_ids"], mb["targets"],
                                                 mb["columns"], temperature=temp)
                    mask = np.asarray(mb["loss_mask"], bool)
                    got = np.asarray(mb["sampler_logprobs"])[mask]
                    want = np.asarray(want)[mask]
                else:
                    want = batch_logprobs(model_cfg, params, mb["tokens"][0],
                                          mb["attention_mask"][0], prompt_len=tb.prompt_len,
                                          temperature=temp)
                    mask = np.asarray(mb["response_mask"][0], bool)
                    got = np.asarray(mb["sampler_logprobs"][0])[mask]
                    want = np.asarray(want)[mask]
                assert got.size > 0 and np.all(got < 0)
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def demo_trainer(tmp_path_factory):
    """A Trainer on the shipped demo base and one step's kept groups."""
    from prorl_jax.rl.trainer import Trainer

    cfg = _demo("rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.max_gen_batches=3",
                "data.val_sources=[]", "rewards.num_workers=1", "logging.tensorboard=false",
                "logging.progress=false", "checkpoint.export_hf=false")
    trainer = Trainer(cfg, tmp_path_factory.mktemp("old_lp_run"), console=lambda *a: None)
    groups, _ = trainer.worker.collect(trainer.state.params, trainer.iterator, lambda i: 7 + i)
    assert groups is not None and groups.logprobs is not None
    yield trainer, groups, trainer.state
    trainer.close()


def _update(trainer, start, groups, **rl):
    rl = {"tis_cap": None, **rl}
    trainer.cfg = dataclasses.replace(trainer.cfg, rl=dataclasses.replace(trainer.cfg.rl, **rl))
    trainer.state = start.replace(params=jax.tree.map(jnp.copy, start.params),  # donated
                                  opt_state=jax.tree.map(jnp.copy, start.opt_state))
    return trainer.update(groups, step=0)


@pytest.mark.slow  # ~30 s of CPU per update variant: each compiles its own train step
@pytest.mark.parametrize("packed", [True, False])
def test_sampler_mode_update_equals_recompute(demo_trainer, packed):
    trainer, groups, start = demo_trainer
    rec = _update(trainer, start, groups, pack_sequences=packed, old_logprobs="recompute")
    smp = _update(trainer, start, groups, pack_sequences=packed, old_logprobs="sampler")
    for m in (rec, smp):
        assert m["logp_mismatch/max"] <= LOGP_MISMATCH_MAX
        assert m["logp_mismatch/mean"] <= m["logp_mismatch/max"]
        assert m["logp_mismatch/mult_prob_error"] == pytest.approx(1.0, abs=LOGP_MISMATCH_MAX)
    # Old logprobs equal within LOGP_MISMATCH_MAX, so the update is the same one.
    for k in ("loss", "pg_loss", "kl", "grad_norm", "ratio_mean"):
        assert smp[k] == pytest.approx(rec[k], rel=1e-4, abs=1e-7), k
    assert "entropy" in rec and "entropy" not in smp  # the rollout entropy came from the pass
    if not packed:
        return
    # TIS with equal logprobs: every weight is 1 (below the cap), the same update again.
    tis = _update(trainer, start, groups, pack_sequences=packed, old_logprobs="recompute",
                  tis_cap=2.0)
    assert tis["loss"] == pytest.approx(rec["loss"], rel=1e-5, abs=1e-7)
