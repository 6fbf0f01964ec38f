"""Dynamic sampling, the jitted GRPO update (micro-batching, non-finite skip, sharding)
and reference resets, on a tiny random Qwen2."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prorl_jax import losses
from prorl_jax.errors import ConfigError
from prorl_jax.model import hf
from prorl_jax.rl import state as state_lib
from prorl_jax.rl.rollout import DynamicSamplingError, RolloutWorker
from prorl_jax.rl.update import batch_logprobs, make_train_step, micro_weights


class ListIterator:
    def __init__(self, records):
        self.records, self.pos = records, 0

    def next_batch(self, n):
        out = [self.records[(self.pos + i) % len(self.records)] for i in range(n)]
        self.pos += n
        return out


class ConstantForSomePool:
    """Rewards 0,1,0,1,... over the samples of an 'informative' prompt in the order they
    are scored (the continuous engine scores rows as they finish), all 0 otherwise."""

    def __init__(self, constant_ids):
        self.constant_ids = constant_ids
        self.seen = collections.Counter()
        self.items = 0

    def score(self, items):
        out = []
        for _, _, gt in items:
            q = gt["entry"]["question"]
            out.append(0.0 if q in self.constant_ids else float(self.seen[q] % 2))
            self.seen[q] += 1
        self.items += len(items)
        return out


@pytest.fixture(scope="module")
def setup(tiny_model_dir, make_config):
    from transformers import AutoTokenizer

    from prorl_jax import data

    cfg = make_config(tiny_model_dir)
    model_cfg, params = hf.load_hf(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    fmt = data.ChatFormatter(tok, dict(cfg.data.suffixes), cfg.sampling.max_prompt_tokens)
    records = data.load_source(cfg.data.sources[0])[:8]
    return cfg, model_cfg, params, tok, fmt, records, make_config


def _worker(setup, pool, **rl):
    cfg, model_cfg, params, tok, fmt, records, make_config = setup
    if rl:
        cfg = make_config(cfg.model.path, rl=rl)
    return RolloutWorker(cfg, model_cfg, None, fmt, tok, pool, (tok.eos_token_id,)), cfg


def test_dynamic_sampling_drops_constant_groups_and_refills(setup):
    _, _, params, _, _, records, _ = setup
    # Prompts 0, 1 (the whole first generation batch) get constant rewards.
    constant = {records[0].ground_truth["entry"]["question"],
                records[1].ground_truth["entry"]["question"]}
    pool = ConstantForSomePool(constant)
    worker, cfg = _worker(setup, pool, max_gen_batches=3, on_max_gen_batches="error")
    kept, m = worker.collect(params, ListIterator(records), lambda i: i)
    assert m["gen_batches"] == 2  # refilled once
    assert pool.items == 2 * cfg.rl.prompts_per_step * cfg.sampling.n
    assert kept.num_groups == cfg.rl.prompts_per_step
    assert not {r.ground_truth["entry"]["question"] for r in kept.records} & constant
    assert m["filtered_fraction"] == pytest.approx(0.5)  # 2 of 4 generated groups constant
    # Every kept group has reward variance: the advantages are not all zero.
    adv = np.asarray(losses.grpo_advantages(kept.rewards, cfg.sampling.n))
    assert np.all(np.abs(adv) > 0.5)


def test_dynamic_sampling_gives_up_after_max_gen_batches(setup):
    _, _, params, _, _, records, _ = setup
    pool = ConstantForSomePool({r.ground_truth["entry"]["question"] for r in records})
    worker, _ = _worker(setup, pool, max_gen_batches=2, on_max_gen_batches="error")
    with pytest.raises(DynamicSamplingError, match=r"kept 0 of 2 groups after rl.max_gen_batches=2"):
        worker.collect(params, ListIterator(records), lambda i: i)
    worker, _ = _worker(setup, pool, max_gen_batches=2, on_max_gen_batches="train")
    kept, m = worker.collect(params, ListIterator(records), lambda i: i)
    assert kept is None and m["gen_batches"] == 2 and m["filtered_fraction"] == 1.0


def _random_batch(model_cfg, M, b, P, R, seed=0, nan_adv=False):
    rng = np.random.default_rng(seed)
    T = P + R
    tokens = rng.integers(3, model_cfg.vocab_size, (M, b, T)).astype(np.int32)
    attn = np.ones((M, b, T), np.int32)
    attn[..., :2] = 0  # left padding
    lengths = rng.integers(1, R + 1, (M, b))
    resp = (np.arange(R)[None, None] < lengths[..., None]).astype(np.int32)
    attn[..., P:] = resp
    adv = rng.normal(size=(M, b)).astype(np.float32)
    if nan_adv:
        adv[0, 0] = np.nan
    old = rng.normal(-3.0, 0.3, (M, b, R)).astype(np.float32)
    return {"tokens": tokens, "attention_mask": attn, "response_mask": resp,
            "advantages": adv, "old_logprobs": old, "ref_logprobs": old + 0.1,
            "weight": micro_weights(resp, M, "token-mean")}


def _flat(batch, M):
    """The same rows as one micro-batch."""
    out = {k: v.reshape(1, -1, *v.shape[2:]) for k, v in batch.items() if k != "weight"}
    out["weight"] = np.ones(1, np.float32)
    return out


def test_micro_batch_accumulation_equals_one_big_batch(setup):
    cfg, model_cfg, params, *_ = setup
    # Plain SGD makes the param change the gradient itself (Adam's first step is ~sign(g),
    # which amplifies float noise in near-zero gradient entries).
    opt = optax.sgd(1.0)
    batch = _random_batch(model_cfg, M=2, b=3, P=8, R=6)
    step = make_train_step(model_cfg, cfg.rl, opt, prompt_len=8, temperature=1.0)
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  (params are donated)
    p2, _, m2 = step(copy(params), opt.init(params), {k: jnp.asarray(v) for k, v in batch.items()})
    p1, _, m1 = step(copy(params), opt.init(params),
                     {k: jnp.asarray(v) for k, v in _flat(batch, 2).items()})
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-6)
    assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-5)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    assert diff < 1e-6
    changed = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params)))
    assert changed > 1e-4  # the update did something


def test_non_finite_update_is_skipped(setup):
    cfg, model_cfg, params, *_ = setup
    opt = state_lib.make_optimizer(cfg.optim)
    batch = _random_batch(model_cfg, M=1, b=2, P=8, R=4, nan_adv=True)
    step = make_train_step(model_cfg, cfg.rl, opt, prompt_len=8, temperature=1.0)
    before = jax.tree.map(np.asarray, params)
    opt_state = opt.init(params)
    new_params, new_opt, m = step(jax.tree.map(jnp.copy, params), opt_state,
                                  {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(m["skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(new_opt)
               if x.dtype == jnp.float32)


def test_train_step_on_2x2x2_mesh_equals_single_device(setup):
    from prorl_jax.model.qwen import param_shardings
    from prorl_jax.sharding import TRAIN_RULES, make_mesh, shard_batch

    cfg, model_cfg, params, *_ = setup
    opt = state_lib.make_optimizer(cfg.optim)
    batch = _random_batch(model_cfg, M=2, b=4, P=8, R=6, seed=3)
    single = make_train_step(model_cfg, cfg.rl, opt, prompt_len=8, temperature=1.0)
    p1, _, m1 = single(jax.tree.map(jnp.copy, params), opt.init(params),
                       {k: jnp.asarray(v) for k, v in batch.items()})
    mesh = make_mesh(2, 2, 2)
    # A copy: device_put may reuse the fixture's buffers, and the step donates its params.
    sharded_params = jax.device_put(jax.tree.map(jnp.copy, params),
                                    param_shardings(model_cfg, mesh, TRAIN_RULES))
    sharded_batch = {k: (jnp.asarray(v) if k == "weight" else
                         shard_batch(v, mesh, TRAIN_RULES, [None, "batch"] + [None] * (v.ndim - 2)))
                     for k, v in batch.items()}
    sharded = make_train_step(model_cfg, cfg.rl, opt, prompt_len=8, temperature=1.0, mesh=mesh)
    p8, _, m8 = sharded(sharded_params, opt.init(sharded_params), sharded_batch)
    assert len(jax.tree.leaves(p8)[0].sharding.device_set) == 8
    # Stated tolerance: float32 reductions in a different order across 8 devices.
    assert float(m8["loss"]) == pytest.approx(float(m1["loss"]), abs=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_reference_reset_zeroes_kl_and_optimizer_moments(setup):
    cfg, model_cfg, params, *_ = setup
    opt = state_lib.make_optimizer(cfg.optim)
    state = state_lib.init_train_state(jax.tree.map(jnp.copy, params), opt)
    batch = _random_batch(model_cfg, M=1, b=2, P=8, R=4)
    step = make_train_step(model_cfg, cfg.rl, opt, prompt_len=8, temperature=1.0)
    new_params, new_opt, _ = step(state.params, state.opt_state,
                                  {k: jnp.asarray(v) for k, v in batch.items()})
    state = state.replace(params=new_params, opt_state=new_opt)
    tokens, attn, mask = (jnp.asarray(batch[k][0]) for k in ("tokens", "attention_mask", "response_mask"))

    def kl(s):
        lp = batch_logprobs(model_cfg, s.params, tokens, attn, prompt_len=8, temperature=1.0)
        ref = batch_logprobs(model_cfg, s.ref_params, tokens, attn, prompt_len=8, temperature=1.0)
        return float(losses.aggregate(losses.kl_penalty(lp, ref, "low_var_kl"), mask))

    moments = lambda s: [x for x in jax.tree.leaves(s.opt_state) if x.ndim > 0]  # noqa: E731
    assert kl(state) > 1e-6 and max(float(jnp.max(jnp.abs(x))) for x in moments(state)) > 0
    kept = state_lib.reset_reference(state, opt, reset_optimizer=False)
    assert kl(kept) == 0.0
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(moments(kept), moments(state)))
    reset = state_lib.reset_reference(state, opt, reset_optimizer=True)
    assert kl(reset) == 0.0
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in moments(reset))


def test_success_threshold_turns_partial_credit_into_success():
    from prorl_jax.config import TrainConfig, build
    from prorl_jax.rl.rollout import shape_rewards

    scores = np.array([1.0, 0.8333, 0.0, 0.99], np.float32)
    lengths, finished = np.array([9, 9, 12, 9]), np.array([True, True, False, True])
    as_is = shape_rewards(TrainConfig(), scores, lengths, finished)
    np.testing.assert_array_equal(as_is, scores)
    cfg = build(TrainConfig, {"rl": {"success_threshold": 1.0}})
    np.testing.assert_array_equal(shape_rewards(cfg, scores, lengths, finished), [1, 0, 0, 0])
    cfg = build(TrainConfig, {"rl": {"success_threshold": 0.8, "nontermination_penalty": -1.0}})
    np.testing.assert_array_equal(shape_rewards(cfg, scores, lengths, finished), [1, 1, -1, 1])
    with pytest.raises(ConfigError, match="rl.success_threshold must be in"):
        build(TrainConfig, {"rl": {"success_threshold": 2.0}})
