"""Packed train batches (rl.pack_sequences): the weights reproduce every aggregation, the
packing is a valid layout, one trainer step equals the padded reference for every loss_agg
mode, shapes come from few buckets, and a too-small token budget is one clear error."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax import losses
from prorl_jax.config import load_config, resolve_config_path
from prorl_jax.errors import ConfigError
from prorl_jax.model import qwen
from prorl_jax.rl import batch as batching
from prorl_jax.rl.rollout import Groups


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_token_weights_reproduce_aggregate(mode):
    rng = np.random.default_rng(0)
    B, T = 7, 11
    lengths = rng.integers(0, T + 1, B)
    lengths[2] = 0  # an empty row is left out of every mean
    mask = np.arange(T)[None] < lengths[:, None]
    v = rng.normal(size=(B, T)).astype(np.float32)
    v[~mask] = np.nan  # masked values never matter
    want = float(losses.aggregate(v, mask, mode))
    w = np.asarray(losses.token_weights(lengths, mode, normalizer=T))
    got = float(np.sum(np.where(mask, v, 0.0) * w[:, None]))
    assert got == pytest.approx(want, rel=1e-6)
    # Any split of the rows sums back to the whole.
    parts = [slice(0, 3), slice(3, 7)]
    split = sum(float(np.sum(np.where(mask[s], v[s], 0.0) * w[s, None])) for s in parts)
    assert split == pytest.approx(want, rel=1e-6)


def test_first_fit_decreasing_is_a_valid_packing():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, 200)
    bins = batching.first_fit_decreasing(lengths, 128)
    items = sorted(i for b in bins for i in b)
    assert items == list(range(200))
    assert all(lengths[b].sum() <= 128 for b in bins)
    # FFD: no item of a later bin would have fitted into the free space of an earlier bin
    # at the moment it was placed; checking the final state is a weaker, necessary form.
    free = [128 - lengths[b].sum() for b in bins]
    smallest_later = [min(lengths[i] for b in bins[j + 1:] for i in b) if j + 1 < len(bins)
                      else 10**9 for j in range(len(bins))]
    assert all(f < s for f, s in zip(free, smallest_later))
    assert len(bins) <= int(np.ceil(lengths.sum() / 128 * 11 / 9)) + 1  # FFD's 11/9 bound


def _groups(rng, G, n, R, vocab=50, max_prompt=9):
    prompts = [list(rng.integers(3, vocab, rng.integers(2, max_prompt + 1))) for _ in range(G)]
    lengths = rng.integers(1, R + 1, G * n).astype(np.int32)
    tokens = rng.integers(3, vocab, (G * n, R)).astype(np.int32)
    rewards = rng.integers(0, 2, G * n).astype(np.float32)
    return Groups(records=[{}] * G, prompt_ids=prompts, tokens=tokens, lengths=lengths,
                  finished=np.ones(G * n, bool), texts=[""] * (G * n), scores=rewards,
                  rewards=rewards)


def _cfg(**rl):
    base = {"rl.prompts_per_step": 4, "rl.mini_batch_prompts": 2, "sampling.n": 3,
            "sampling.max_new_tokens": 12, "sampling.max_prompt_tokens": 16,
            "model.path": "builtin:demo_base", **{f"rl.{k}": v for k, v in rl.items()}}
    return load_config(resolve_config_path("demo"), [f"{k}={v}" for k, v in base.items()])


def test_packed_layout_holds_every_sequence_once():
    rng = np.random.default_rng(2)
    cfg = _cfg(micro_batch_tokens=64)
    groups = _groups(rng, 4, 3, 12)
    order = np.array([2, 0, 3, 1])
    tb = batching.train_batch(cfg, groups, order, pad_id=0)
    assert tb.packed and len(tb.minibatches) == 2
    T = tb.minibatches[0][0]["tokens"].shape[1]
    assert T <= 64 and all(mb["tokens"].shape == (64 // T, T) for m in tb.minibatches for mb in m)
    for k, gs in enumerate((order[:2], order[2:])):
        want = sorted(tuple(groups.prompt_ids[g]) + tuple(groups.tokens[g * 3 + j, :groups.lengths[g * 3 + j]])
                      for g in gs for j in range(3))
        got = []
        for mb in tb.minibatches[k]:
            for r in range(mb["tokens"].shape[0]):
                seg = np.asarray(mb["segment_ids"][r])
                for s in range(1, seg.max() + 1):
                    cols = np.flatnonzero(seg == s)
                    assert np.all(np.diff(cols) == 1)  # contiguous
                    toks = np.asarray(mb["tokens"][r])[cols]
                    got.append(tuple(toks))
                    # The mask marks exactly the columns that predict a response token.
                    lm = np.asarray(mb["loss_mask"][r])[cols]
                    n_resp = int(lm.sum())
                    assert lm[-1] == 0 and np.all(lm[len(cols) - 1 - n_resp:-1] == 1)
                    np.testing.assert_array_equal(np.asarray(mb["targets"][r])[cols][lm == 1],
                                                  toks[len(cols) - n_resp:])
                # The lm head's columns: exactly the row's loss columns, in order, then -1.
                c = np.asarray(mb["columns"][r])
                lm_row = np.flatnonzero(np.asarray(mb["loss_mask"][r]))
                np.testing.assert_array_equal(c[:len(lm_row)], lm_row)
                assert np.all(c[len(lm_row):] == -1)
        assert sorted(got) == want
    assert tb.real_tokens == sum(len(groups.prompt_ids[i // 3]) + groups.lengths[i]
                                 for i in range(12))


def test_partial_micro_batch_gets_a_quarter_octave_row():
    # The last micro-batch's row: at most 25% above its fill, four shapes per octave.
    fills = np.arange(1, 20000)
    rows = np.array([batching._bucket_quarter(int(f), 128) for f in fills])
    assert np.all(rows >= fills) and np.all(rows[fills > 128] <= 1.25 * fills[fills > 128])
    assert len(set(rows[(fills > 4096) & (fills <= 8192)])) == 4
    # In a mini-batch: two full rows of 1000 and one holding 530 tokens, which gets 640
    # (the octave buckets {512, 768, 1024} would give 768).
    prompts = [np.ones(5, np.int32)] * 5
    responses = [np.ones(n, np.int32) for n in (495, 495, 525, 495, 495)]
    micros = batching.pack_minibatch(prompts, responses, {}, T=1000, rows_dev_max=1,
                                     shards=1, pad_id=0)
    assert sorted(mb["tokens"].shape for mb in micros) == [(1, 640), (1, 1000), (1, 1000)]


def test_too_small_token_budget_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"rl\.micro_batch_tokens \(20\) is smaller than the "
                                          r"longest sequence"):
        _cfg(micro_batch_tokens=20)
    # Called directly (no config check) the packer names the key as well.
    with pytest.raises(ConfigError, match=r"rl\.micro_batch_tokens \(10\).*longest sequence of "
                                          r"this step \(12 tokens\)"):
        batching.pack_length(12, 10)
    assert batching.pack_length(300, 1000) == 1000  # flash attention: rows of the budget
    assert batching.pack_length(300, 1000, dense=True) == 384  # dense: the bucket


def test_compiled_programs_are_bounded_by_the_buckets(tiny_model_dir):
    from prorl_jax.model import hf
    from prorl_jax.rl import state as state_lib
    from prorl_jax.rl.update import PackedStep

    model_cfg, params = hf.load_hf(str(tiny_model_dir))
    cfg = _cfg(micro_batch_tokens=56, kl_coef=0.0)
    opt = state_lib.make_optimizer(cfg.optim)
    step = PackedStep(model_cfg, cfg.rl, opt, temperature=1.0)
    # Committed, like the outputs of the step itself (an uncommitted first argument would
    # be one more cache entry).
    dev = jax.devices()[0]
    params = jax.device_put(jax.tree.map(jnp.copy, params), dev)
    opt_state = jax.device_put(opt.init(params), dev)
    rng = np.random.default_rng(3)
    shapes = set()
    for _ in range(8):
        groups = _groups(rng, 4, 3, int(rng.integers(2, 13)), vocab=model_cfg.vocab_size,
                         max_prompt=int(rng.integers(2, 17)))
        tb = batching.train_batch(cfg, groups, rng.permutation(4), pad_id=0)
        for micros in tb.minibatches:
            for mb in micros:
                mb["old_logprobs"] = mb["ref_logprobs"] = jnp.zeros(mb["tokens"].shape)
                shapes.add((mb["tokens"].shape, mb["columns"].shape))
            params, opt_state, _ = step.step(params, opt_state, micros)
    sizes = step.cache_sizes()
    # 8 steps of random lengths: one program per distinct ([b, T], [b, R]), from a few buckets.
    assert sizes["accumulate"] == len(shapes) <= 2, (sizes, shapes)
    assert sizes["apply"] == 1


def test_packed_logprobs_equal_padded_logprobs(tiny_model_dir):
    """Each sequence's response logprobs are the same in a packed row and padded alone."""
    from prorl_jax.model import hf
    from prorl_jax.rl.update import batch_logprobs, batch_packed_logprobs

    model_cfg, params = hf.load_hf(str(tiny_model_dir))
    rng = np.random.default_rng(4)
    cfg = _cfg()
    groups = _groups(rng, 4, 3, 12, vocab=model_cfg.vocab_size)
    tb = batching.train_batch(cfg, groups, np.arange(4), pad_id=0)
    padded = batching.layout(groups, 16, 0)
    want = np.asarray(batch_logprobs(model_cfg, params, padded["tokens"], padded["attention_mask"],
                                     prompt_len=16, temperature=1.3))
    got = {}
    for micros in tb.minibatches:
        for mb in micros:
            lp = np.asarray(batch_packed_logprobs(model_cfg, params, mb["tokens"], mb["segment_ids"],
                                                  mb["targets"], mb["columns"], temperature=1.3))
            # The head on the loss columns only == the head on every column, there; 0 elsewhere.
            full = np.asarray(batch_packed_logprobs(model_cfg, params, mb["tokens"],
                                                    mb["segment_ids"], mb["targets"],
                                                    temperature=1.3))
            on = np.asarray(mb["loss_mask"]) == 1
            np.testing.assert_allclose(lp[on], full[on], rtol=1e-6, atol=1e-6)
            assert np.all(lp[~on] == 0)
            for r in range(lp.shape[0]):
                seg = np.asarray(mb["segment_ids"][r])
                for s in range(1, seg.max() + 1):
                    cols = np.flatnonzero((seg == s) & (np.asarray(mb["loss_mask"][r]) == 1))
                    got[tuple(np.asarray(mb["tokens"][r])[seg == s])] = lp[r, cols]
    for i in range(12):
        key = tuple(groups.prompt_ids[i // 3]) + tuple(groups.tokens[i, :groups.lengths[i]])
        np.testing.assert_allclose(got[key], want[i, :groups.lengths[i]], rtol=1e-5, atol=1e-5)
    assert np.asarray(qwen.segment_positions(tb.minibatches[0][0]["segment_ids"])).max() > 0


# ----------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def demo_trainer(tmp_path_factory):
    """A Trainer on the shipped demo base, and one step's kept groups (collected once)."""
    from prorl_jax.rl.trainer import Trainer

    # Adam with eps = 1 steps ~lr * g for the gradients here (|g| << 1): its usual first
    # step ~lr * sign(g) would turn float noise in near-zero gradient entries (the two
    # layouts sum in different orders) into whole steps. The large lr moves the policy far
    # enough within the step that later mini-batches clip.
    overrides = ["rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.micro_batches=1",
                 "rl.max_gen_batches=3", "rl.ppo_epochs=2", "rl.kl_coef=0.05",
                 "optim.lr=0.3", "optim.eps=1.0", "data.val_sources=[]", "rewards.num_workers=1",
                 "logging.tensorboard=false", "logging.progress=false",
                 "checkpoint.export_hf=false"]
    cfg = load_config(resolve_config_path("demo"), overrides)
    trainer = Trainer(cfg, tmp_path_factory.mktemp("pack_run"), console=lambda *a: None)
    groups, _ = trainer.worker.collect(trainer.state.params, trainer.iterator, lambda i: 7 + i)
    assert groups is not None and groups.num_groups == 4
    # A reference that differs from the policy, so the KL term is not 0.
    keys = jax.random.split(jax.random.key(5), len(jax.tree.leaves(trainer.state.params)))
    ref = jax.tree.unflatten(jax.tree.structure(trainer.state.params),
                             [p + 0.02 * jax.random.normal(k, p.shape, p.dtype)
                              for p, k in zip(jax.tree.leaves(trainer.state.params), keys)])
    start = trainer.state.replace(ref_params=ref)
    yield trainer, groups, start
    trainer.close()


def _one_update(trainer, start, groups, cfg):
    trainer.cfg = cfg
    trainer.state = start.replace(params=jax.tree.map(jnp.copy, start.params),  # donated
                                  opt_state=jax.tree.map(jnp.copy, start.opt_state))
    m = trainer.update(groups, step=0)
    return m, jax.tree.map(np.asarray, trainer.state.params)


# One Trainer (and one rollout collection) for every mode: the packed programs (one
# PackedStep, whatever loss_agg) and both logprob passes compile once; each mode compiles
# only its padded update (measured, load ~3 on 2 cores: setup 40 s, first mode 100 s, each
# further mode ~38 s; was ~40 s per mode with the packed programs compiled per mode too).
@pytest.mark.slow
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_packed_step_equals_padded_step(demo_trainer, mode):
    trainer, groups, start = demo_trainer
    base = trainer.cfg
    padded = dataclasses.replace(base, rl=dataclasses.replace(
        base.rl, loss_agg=mode, pack_sequences=False))
    # A budget of 224 tokens = one row of ~4 sequences per micro-batch: each mini-batch
    # (2 prompts x 8 samples of ~55 tokens) spreads over 4-5 packed micro-batches; the
    # padded one has one.
    packed = dataclasses.replace(base, rl=dataclasses.replace(
        base.rl, loss_agg=mode, pack_sequences=True, micro_batch_tokens=224))
    m_pad, p_pad = _one_update(trainer, start, groups, padded)
    m_pack, p_pack = _one_update(trainer, start, groups, packed)
    for k in ("loss", "pg_loss", "kl", "grad_norm", "pg_clipfrac", "approx_kl", "ratio_mean",
              "ratio_max"):
        assert m_pack[k] == pytest.approx(m_pad[k], rel=1e-5, abs=1e-9), k
    # The entropy reads the logits straight from each layout's forward (the loss terms above
    # see them through ratios against old logprobs from that same layout, so their layout
    # error cancels): 1.5e-5 apart on a CI machine, under 1e-5 here. A bug (a token scored under
    # another sequence's attention) is off by far more than 1e-4.
    assert m_pack["entropy"] == pytest.approx(m_pad["entropy"], rel=1e-4), "entropy"
    assert m_pad["kl"] > 1e-4 and m_pad["pg_clipfrac"] > 0  # the comparison has teeth
    assert m_pack["tokens/packing_efficiency"] > m_pad["tokens/packing_efficiency"]
    for a, b in zip(jax.tree.leaves(p_pack), jax.tree.leaves(p_pad)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    moved = max(float(np.max(np.abs(a - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(p_pad), jax.tree.leaves(start.params)))
    assert moved > 1e-2  # the updates did something
