"""generate() on a tiny random model: consistency with the forward pass, stops, seeds,
chunking, compilation count, mesh == single device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax.errors import UserError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.sampling import GenerationOutput, SamplingParams, sampler
from prorl_jax.sampling.sampler import generate  # the static engine, the reference
from prorl_jax.sharding import make_mesh

CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
PROMPTS = [[5, 6, 7], list(range(10, 19)), [3], list(range(20, 37))]  # ragged, up to 17
NEW = 16
# Tests share these few programs (one compile each) to keep the file fast.
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=NEW)
NUCLEUS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=NEW, n=2)


@pytest.fixture(scope="module")
def params():
    # Weights 3x the init scale: peaked enough that greedy has clear winners (smallest top-2
    # logit gap ~1e-3), small enough that activations stay in a range where fp32 rounding
    # of the two evaluation orders stays ~1e-6.
    p = qwen.init_params(CFG, jax.random.key(0))
    return jax.tree.map(lambda x: x * 3 if x.ndim > 1 else x, p)


def _full_forward_logprobs(params, prompt, completion, temperature):
    """log softmax(logits / T) of each completion token from ONE forward over prompt+completion."""
    seq = jnp.asarray([list(prompt) + list(completion)], jnp.int32)
    logits = qwen.forward(CFG, params, seq)[0, len(prompt) - 1:-1]  # [L, V]
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    return np.asarray(jnp.take_along_axis(logp, jnp.asarray(completion)[:, None], -1)[:, 0]), \
        np.asarray(logits)


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=1.3, top_k=20, max_new_tokens=NEW, n=2),
    GREEDY,
])
def test_tokens_and_logprobs_match_a_full_forward(params, sampling):
    out = generate(CFG, params, PROMPTS, sampling, seed=3)
    assert isinstance(out, GenerationOutput)
    rows = len(PROMPTS) * sampling.n
    assert out.tokens.shape == out.logprobs.shape == (rows, NEW)
    assert out.tokens.dtype == np.int32 and out.logprobs.dtype == np.float32
    assert out.lengths.dtype == np.int32 and out.finished.dtype == np.bool_
    np.testing.assert_array_equal(out.lengths, NEW)  # no stop ids
    assert not out.finished.any()
    temperature = sampling.temperature or 1.0
    for r in range(rows):
        prompt = PROMPTS[r // sampling.n]  # prompt-major rows
        ref, logits = _full_forward_logprobs(params, prompt, out.tokens[r], temperature)
        np.testing.assert_allclose(out.logprobs[r], ref, atol=1e-5, rtol=0)
        if sampling.greedy:
            np.testing.assert_array_equal(out.tokens[r], logits.argmax(-1))
    if sampling.n > 1:  # samples of one prompt differ
        assert not np.array_equal(out.tokens[0], out.tokens[1])


def test_stop_tokens_end_rows_and_pad_after(params):
    base = generate(CFG, params, PROMPTS, GREEDY)
    stops = (int(base.tokens[0, 4]), int(base.tokens[2, 9]))
    out = generate(CFG, params, PROMPTS, dataclasses.replace(GREEDY, stop_token_ids=stops))
    for r in range(len(PROMPTS)):
        hits = np.flatnonzero(np.isin(base.tokens[r], stops))
        length = hits[0] + 1 if hits.size else NEW
        assert out.lengths[r] == length
        assert out.finished[r] == bool(hits.size)
        np.testing.assert_array_equal(out.tokens[r, :length], base.tokens[r, :length])
        np.testing.assert_array_equal(out.logprobs[r, :length], base.logprobs[r, :length])
        assert (out.tokens[r, length:] == sampler.PAD_TOKEN).all()
        assert (out.logprobs[r, length:] == 0).all()
    assert out.finished[0] and out.lengths[0] <= 5


def test_top_k_one_and_tiny_top_p_equal_greedy(params):
    greedy = generate(CFG, params, PROMPTS, GREEDY)
    for sp in (SamplingParams(temperature=1.5, top_k=1, max_new_tokens=NEW),
               dataclasses.replace(NUCLEUS, temperature=0.8, top_p=1e-6)):
        out = generate(CFG, params, PROMPTS, sp, seed=11)
        for j in range(sp.n):
            np.testing.assert_array_equal(out.tokens[j::sp.n], greedy.tokens)


def test_seed_reproducible_and_chunking_invisible(params):
    sp = NUCLEUS
    a = generate(CFG, params, PROMPTS, sp, seed=7)
    b = generate(CFG, params, PROMPTS, sp, seed=7)
    c = generate(CFG, params, PROMPTS, sp, seed=8)
    for f in ("tokens", "logprobs", "lengths", "finished"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.tokens, c.tokens)
    # 8 rows of 32 + 16 slots; a 100-slot budget gives chunks of 2 rows (4 chunks).
    assert sampler.chunk_rows(8, 48, 100) == 2
    d = generate(CFG, params, PROMPTS, sp, seed=7, max_batch_tokens=100)
    np.testing.assert_array_equal(d.tokens, a.tokens)
    np.testing.assert_array_equal(d.lengths, a.lengths)
    np.testing.assert_allclose(d.logprobs, a.logprobs, atol=1e-6, rtol=0)


def test_repeated_calls_do_not_recompile(params):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    sp = NUCLEUS
    generate(CFG, params, [[1, 2], [3, 4, 5], [6]], sp, seed=0)  # warm: 6 rows -> bucket 8
    programs = sampler._sample_chunk._cache_size()  # compiled programs (one per shape key)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        # Same buckets (<= 8 rows, prompts <= 16), new values of every runtime field.
        generate(CFG, params, [[7] * 16, [8], [9, 9]], sp, seed=1)
        generate(CFG, params, [[7] * 5, [8] * 11, [9], [2, 3]],
                 dataclasses.replace(sp, temperature=0.7, top_p=0.5, stop_token_ids=(4, 5)),
                 seed=2)
        assert compiles == [] and sampler._sample_chunk._cache_size() == programs
        generate(CFG, params, [[7] * 40], sp, seed=0)  # prompt bucket 64: one new program
        assert sampler._sample_chunk._cache_size() == programs + 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_mesh_equals_single_device(params):
    assert len(jax.devices()) >= 8
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    for sp in (NUCLEUS, GREEDY):
        single = generate(CFG, params, PROMPTS, sp, seed=5)
        sharded = generate(CFG, params, PROMPTS, sp, seed=5, mesh=mesh)
        np.testing.assert_array_equal(sharded.tokens, single.tokens)
        np.testing.assert_array_equal(sharded.lengths, single.lengths)
        np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5, rtol=0)


def test_bucket_and_chunk_rows():
    assert [sampler.bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert sampler.bucket(3, minimum=16) == 16 and sampler.bucket(17, minimum=16) == 32
    assert sampler.bucket(3, multiple=6) == 6 and sampler.bucket(9, multiple=6) == 18
    assert sampler.chunk_rows(10, 100, None) == 16
    assert sampler.chunk_rows(10, 100, 1600) == 16  # the whole bucket fits
    assert sampler.chunk_rows(10, 100, 1599) == 8
    assert sampler.chunk_rows(10, 100, 350) == 2
    assert sampler.chunk_rows(10, 100, 350, multiple=4) == 4  # at least one row per shard
    with pytest.raises(UserError, match="max_batch_tokens"):
        sampler.chunk_rows(10, 100, 99)


@pytest.mark.parametrize("prompts,match", [
    ([], "non-empty list"),
    ([[1, 2], []], "prompt 1"),
    ([[1, 97]], "outside"),
    ([[1] * 500], "max_position_embeddings"),
])
def test_bad_prompts_are_user_errors(params, prompts, match):
    with pytest.raises(UserError, match=match):
        generate(CFG, params, prompts, SamplingParams(max_new_tokens=16))
