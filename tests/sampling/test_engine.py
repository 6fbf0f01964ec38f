"""The continuous engine against the static one (the reference): same tokens, lengths and
finished flags for a seed, logprobs equal up to float rounding, whatever the slot count,
refills, layout or mesh; the streaming form; bounded compilation; bad settings."""

import dataclasses

import jax
import numpy as np
import pytest

from prorl_jax import config as config_mod
from prorl_jax.errors import ConfigError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.sampling import SamplingParams, engine, generate, generate_stream, sampler
from prorl_jax.sharding import make_mesh

CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
_rng = np.random.default_rng(0)
PROMPTS = [_rng.integers(1, 97, size=int(n)).tolist() for n in (3, 29, 1, 12, 7, 20, 2)]
NEW = 24
STOPS = (3, 7, 11, 13, 17)  # some rows stop early, some run to the budget
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=NEW, stop_token_ids=STOPS)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, top_k=30, max_new_tokens=NEW, n=4,
                         stop_token_ids=STOPS)
SLOTS, SYNC = 4, 4  # far fewer slots than rows: many refills


@pytest.fixture(scope="module")
def params():
    p = qwen.init_params(CFG, jax.random.key(0))  # 3x the init scale, as test_sampler.py
    return jax.tree.map(lambda x: x * 3 if x.ndim > 1 else x, p)


@pytest.fixture(scope="module")
def static(params):
    cache = {}

    def get(prompts, sampling, seed):
        key = (str(prompts), sampling, seed)
        if key not in cache:
            cache[key] = sampler.generate(CFG, params, prompts, sampling, seed=seed)
        return cache[key]
    return get


def assert_same(out, ref):
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(out.finished, ref.finished)
    # The static engine's own chunkings differ by up to ~2e-6 here (|logprob| up to ~4.5,
    # about 4 float32 ulps): the same bound, no looser.
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sampling,prompts", [
    (GREEDY, PROMPTS),  # n = 1
    (SAMPLED, PROMPTS),  # n = 4, temperature + top-p + top-k
    (dataclasses.replace(SAMPLED, n=16, temperature=1.2), PROMPTS[:3]),  # n = 16
])
def test_continuous_equals_static(params, static, sampling, prompts):
    ref = static(prompts, sampling, 5)
    # Rows that stop and rows that hit the budget, and ragged lengths, are all exercised.
    assert ref.finished.any() and (~ref.finished).any()
    assert len(set(ref.lengths.tolist())) > 3
    stats = {}
    out = engine.collect(generate_stream(CFG, params, prompts, sampling, seed=5,
                                         decode_slots=SLOTS, steps_per_sync=SYNC, stats=stats),
                         len(prompts) * sampling.n, NEW)
    assert_same(out, ref)
    assert stats["tokens"] == ref.lengths.sum()
    assert stats["slot_steps"] >= stats["decode_tokens"] == ref.lengths.sum() - len(ref.lengths)


@pytest.mark.slow  # four more sets of programs (~1 min to compile on 2 loaded cores)
def test_slot_counts_layouts_and_default_budget_agree(params, static):
    ref = static(PROMPTS, SAMPLED, 5)
    for kwargs in ({"decode_slots": 2, "steps_per_sync": 1},
                   {"decode_slots": 8, "steps_per_sync": 7, "layout": "train"},
                   {"max_batch_tokens": 4 * (32 + NEW)}):  # 4 slots by the KV budget
        out = generate(CFG, params, PROMPTS, SAMPLED, seed=5, **kwargs)
        assert_same(out, ref)
    other = generate(CFG, params, PROMPTS, SAMPLED, seed=6, decode_slots=SLOTS)
    assert not np.array_equal(other.tokens, ref.tokens)
    assert generate(CFG, params, PROMPTS, SAMPLED, seed=5, engine="static") is not None


def test_layout_is_a_static_choice_built_once_per_policy_version(params, static, monkeypatch):
    ref = static(PROMPTS, SAMPLED, 5)  # the CPU default: the decode layout
    assert sampler.default_layout() == "decode"
    built = []
    real = sampler._layout_params
    monkeypatch.setattr(sampler, "_layout_params", lambda *a: built.append(1) or real(*a))
    # GPU / TPU's choice, asked for on CPU: decode from the training layout, no second copy.
    budget = 8 * (32 + NEW)  # 8-row chunks: four of them
    assert_same(sampler.generate(CFG, params, PROMPTS, SAMPLED, seed=5, layout="train",
                                 max_batch_tokens=budget), ref)
    assert built == []
    # The decode layout: built once per call, not per chunk ...
    assert_same(sampler.generate(CFG, params, PROMPTS, SAMPLED, seed=5, max_batch_tokens=budget),
                ref)
    assert len(built) == 1
    # ... or once per policy version by the caller, and then by neither engine.
    policy = sampler.decode_params(CFG, params)
    for engine_name in ("static", "continuous"):
        assert_same(generate(CFG, params, PROMPTS, SAMPLED, seed=5, engine=engine_name,
                             decode_params=policy, decode_slots=SLOTS), ref)
    assert len(built) == 2
    # The model never guesses the layout from the params' keys.
    tokens = np.ones((1, 3), np.int32)
    with pytest.raises(ValueError, match="decode_layout"):
        qwen.forward(CFG, params, tokens, layout="decode")
    with pytest.raises(ConfigError, match="sampling layout"):
        generate(CFG, params, PROMPTS, SAMPLED, layout="fast")


@pytest.mark.slow  # the mesh programs (~1 min to compile on 2 loaded cores)
def test_mesh_equals_single_device_static(params, static):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    for sampling in (GREEDY, SAMPLED):
        out = generate(CFG, params, PROMPTS, sampling, seed=5, mesh=mesh, decode_slots=SLOTS,
                       steps_per_sync=SYNC)
        ref = static(PROMPTS, sampling, 5)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_array_equal(out.lengths, ref.lengths)
        np.testing.assert_array_equal(out.finished, ref.finished)
        np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5, rtol=0)  # as static


def test_stream_yields_each_row_once_equal_to_the_batch(params, static):
    ref = static(PROMPTS, SAMPLED, 5)
    seen = []
    for row in generate_stream(CFG, params, PROMPTS, SAMPLED, seed=5, decode_slots=SLOTS,
                               steps_per_sync=SYNC):
        assert isinstance(row, engine.FinishedRow)
        seen.append(row.index)
        assert row.length == ref.lengths[row.index] == len(row.tokens) == len(row.logprobs)
        assert row.finished == ref.finished[row.index]
        np.testing.assert_array_equal(row.tokens, ref.tokens[row.index, :row.length])
        np.testing.assert_allclose(row.logprobs, ref.logprobs[row.index, :row.length],
                                   atol=1e-6, rtol=1e-6)
    assert sorted(seen) == list(range(len(PROMPTS) * SAMPLED.n))
    # Rows come out as they finish, not in row order: short rows overtake long ones.
    assert seen != sorted(seen)


def _programs():
    return sum(f._cache_size() for f in (engine._prefill, engine._insert, engine._decode_block,
                                         engine._compact, engine._empty_slots,
                                         engine._layout_params))


def test_repeated_calls_reuse_the_compiled_programs(params):
    sp = SAMPLED
    before = _programs()
    for seed, prompts, sampling in [
            (0, PROMPTS, sp),
            (1, [[7] * 30, [8], [9, 9]], sp),
            (2, PROMPTS[::-1], dataclasses.replace(sp, temperature=0.7, top_p=0.5,
                                                   stop_token_ids=(4, 5, 6, 8, 9)))]:
        generate(CFG, params, prompts, sampling, seed=seed, decode_slots=SLOTS)
    # Bounded by construction: prefill / insert per group bucket (here 2 and 4 prompts),
    # decode blocks per window bucket (16, 24 generated slots) and slot count (4, then
    # 3, 2 and 1 at the tail), compaction per (slot count, smaller slot count), empty
    # state, layout.
    # Which window and tail sizes a call meets depends on its rows' lengths.
    sizes = len(engine.tail_sizes(SLOTS))
    assert sizes == 4
    assert _programs() - before <= 2 + 2 + 2 * sizes + sizes * (sizes - 1) // 2 + 1 + 1
    # New runtime values of every field that is not a shape: no new program. Without stop
    # ids every row runs to the budget, so the lengths (and with them the buckets met)
    # cannot depend on the seed, temperature or top-p (top_k is a shape: lax.top_k's k).
    to_budget = dataclasses.replace(sp, stop_token_ids=())
    generate(CFG, params, PROMPTS, to_budget, seed=0, decode_slots=SLOTS)
    first = _programs()
    generate(CFG, params, PROMPTS, dataclasses.replace(to_budget, temperature=0.7, top_p=0.5),
             seed=5, decode_slots=SLOTS)
    assert _programs() == first


@pytest.mark.parametrize("kwargs,match", [
    ({"engine": "paged"}, "sampling.engine"),
    ({"decode_slots": 0}, "sampling.decode_slots"),
    ({"steps_per_sync": 0}, "sampling.steps_per_sync"),
    ({"decode_slots": 8, "max_batch_tokens": 100}, "sampling.decode_slots"),
    ({"decode_slots": 3, "mesh": "mesh"}, "sampling.decode_slots"),
])
def test_bad_engine_settings_are_one_line_config_errors(params, kwargs, match):
    if kwargs.get("mesh") == "mesh":
        kwargs = {**kwargs, "mesh": make_mesh(data=2, fsdp=2, tensor=2)}
    with pytest.raises(ConfigError, match=match) as err:
        generate(CFG, params, PROMPTS, GREEDY, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("sampling,match", [
    ({"engine": "paged"}, "sampling.engine"),
    ({"decode_slots": 0}, "sampling.decode_slots"),
    ({"steps_per_sync": 0}, "sampling.steps_per_sync"),
    ({"decode_slots": 64, "max_new_tokens": 100, "max_batch_tokens": 4096},
     "sampling.decode_slots"),
])
def test_bad_engine_config_keys(sampling, match):
    with pytest.raises(ConfigError, match=match):
        config_mod.build(config_mod.SamplingConfig, sampling, prefix="sampling")


def test_sample_and_score_scores_rows_while_decoding(params, static):
    from prorl_jax.sampling.scoring import completion_ids, sample_and_score

    ref = static(PROMPTS, SAMPLED, 5)
    calls = []

    def score(items):  # a verifier that sees each completion once
        calls.append(len(items))
        return [float(len(text) % 3) for _, text, _ in items]

    def decode(ids):
        return " ".join(map(str, ids))

    out = sample_and_score(CFG, params, PROMPTS, SAMPLED, item=lambda r, t: ("math", t, r),
                           decode=decode, score=score, seed=5, decode_slots=SLOTS,
                           steps_per_sync=SYNC)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    texts = [decode(completion_ids(ref.tokens[r], ref.lengths[r], ref.finished[r]))
             for r in range(len(ref.lengths))]
    assert out.texts == texts
    np.testing.assert_array_equal(out.scores, [float(len(t) % 3) for t in texts])
    assert sum(calls) == len(texts) and len(calls) > 1  # scored in pieces, as rows finished
