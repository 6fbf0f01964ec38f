"""KV cache path: prefill + decode through the cache equals one full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig

CFG = ModelConfig(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, rope_theta=1e4)
QWEN3 = ModelConfig(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=10, model_type="qwen3",
                    attention_bias=False, qk_norm=True, tie_word_embeddings=True)


def random_params(cfg, seed=0):
    """Random params drawn on the host: no PRNG compile, which dominates init_params on CPU."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype),
                        qwen.param_shapes(cfg))


@pytest.fixture(scope="module", params=[CFG, QWEN3], ids=["qwen2", "qwen3"])
def model(request):
    return request.param, random_params(request.param, 1)


def test_prefill_then_decode_equals_full_forward(model):
    cfg, params = model
    tokens = jax.random.randint(jax.random.key(2), (3, 9), 0, cfg.vocab_size)
    full = qwen.forward(cfg, params, tokens)
    cache = qwen.init_cache(cfg, 3, 12)
    logits, cache = qwen.forward(cfg, params, tokens[:, :5], cache=cache)
    steps = [logits]
    for t in range(5, 9):
        step, cache = qwen.forward(cfg, params, tokens[:, t:t + 1], cache=cache)
        steps.append(step)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)
    assert int(cache.index) == 9
    assert cache.mask[:, :9].all() and not cache.mask[:, 9:].any()


def test_decode_layout_decodes_like_the_stacked_params(model):
    """The sampler's decode layout (per-layer, output-major kernels) is the same function."""
    cfg, params = model
    tokens = jax.random.randint(jax.random.key(3), (3, 9), 0, cfg.vocab_size)
    mask = jnp.ones((3, 9), jnp.int32).at[1, :2].set(0)  # one left-padded row
    cache = qwen.init_cache(cfg, 3, 12)
    _, cache = qwen.forward(cfg, params, tokens[:, :5], mask[:, :5], cache=cache)
    fast = qwen.decode_layout(cfg, params)
    fast_cache = qwen.split_cache(cache)
    for t in range(5, 9):
        want, cache = qwen.forward(cfg, params, tokens[:, t:t + 1], cache=cache)
        got, fast_cache = qwen.forward(cfg, fast, tokens[:, t:t + 1], cache=fast_cache,
                                       layout="decode")
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    np.testing.assert_allclose(qwen.stack_cache(fast_cache).k, cache.k, atol=1e-6, rtol=0)
    # Output-major means [out..., in...]: o's kernel [N, H, D] becomes [D, N, H].
    layer = fast["layers"][0]
    assert "kernel" not in layer["attn"]["o"]
    np.testing.assert_array_equal(layer["attn"]["o"]["kernel_out_major"],
                                  params["layers"]["attn"]["o"]["kernel"][0].transpose(2, 0, 1))
    np.testing.assert_array_equal(qwen.unembed_matrix(cfg, fast, "decode"),
                                  qwen.unembed_matrix(cfg, params))


def test_out_major_dot_is_the_einsum():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))  # [B, T, N, H]
    w = jax.random.normal(jax.random.key(1), (4, 5, 6))  # [N, H, D]
    want = jnp.einsum("BTNH,NHD->BTD", x, w)
    got = qwen.out_major_dot(x, w.transpose(2, 0, 1), in_ndim=2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    feature_major = qwen.out_major_dot(x, w.transpose(2, 0, 1), in_ndim=2, transpose_out=False)
    np.testing.assert_allclose(feature_major, want.reshape(6, 6).T, atol=1e-5, rtol=0)


def test_left_padded_prefill_and_decode_match_unpadded_rows(model):
    cfg, params = model
    rows = [[5, 7, 9, 11, 13], [3, 4], [8, 1, 2, 6]]
    extra = [[20, 21, 22], [30, 31, 32], [40, 41, 42]]  # decoded one at a time
    T = max(map(len, rows))
    tokens = np.zeros((3, T), np.int32)
    mask = np.zeros((3, T), np.int32)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    cache = qwen.init_cache(cfg, 3, T + 3)
    prefill, cache = qwen.forward(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), cache=cache)
    assert np.isfinite(np.asarray(prefill)).all()  # fully masked padding rows stay finite
    decoded = []
    for t in range(3):
        step, cache = qwen.forward(cfg, params, jnp.asarray([[e[t]] for e in extra]), cache=cache)
        decoded.append(np.asarray(step[:, 0]))
    # Reference: each row unpadded. Right padding (after the row) cannot change its causal
    # logits, so one right-padded batch gives every row's unpadded reference at once.
    full = [r + e for r, e in zip(rows, extra)]
    ref = np.asarray(qwen.forward(cfg, params, jnp.asarray([f + [0] * (T + 3 - len(f)) for f in full])))
    for i, r in enumerate(rows):
        np.testing.assert_allclose(prefill[i, T - len(r):], ref[i, :len(r)], atol=1e-5, rtol=0)
        for t in range(3):
            np.testing.assert_allclose(decoded[t][i], ref[i, len(r) + t], atol=1e-5, rtol=0)


def test_left_padding_without_cache_matches_unpadded(model):
    cfg, params = model
    tokens = jnp.asarray([[0, 0, 4, 5, 6], [7, 8, 9, 10, 11]])
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    padded = qwen.forward(cfg, params, tokens, mask)
    unpadded = qwen.forward(cfg, params, jnp.asarray([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11]]))
    np.testing.assert_allclose(padded[0, 2:], unpadded[0, :3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(padded[1], unpadded[1], atol=1e-5, rtol=0)


def test_forward_hidden_times_unembed_is_forward(model):
    cfg, params = model
    tokens = jnp.asarray([[1, 2, 3, 4]])
    hidden = qwen.forward_hidden(cfg, params, tokens)
    assert hidden.shape == (1, 4, cfg.hidden_size)
    logits = jnp.einsum("BTD,DV->BTV", hidden, qwen.unembed_matrix(cfg, params))
    np.testing.assert_allclose(logits, qwen.forward(cfg, params, tokens), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_policies_do_not_change_values_or_grads(remat):
    params = random_params(CFG, 3)
    tokens = jax.random.randint(jax.random.key(4), (2, 6), 0, CFG.vocab_size)

    def loss(cfg, p):
        return jnp.mean(jax.nn.logsumexp(qwen.forward(cfg, p, tokens), axis=-1))

    ref_val, ref_grad = jax.value_and_grad(lambda p: loss(CFG, p))(params)
    val, grad = jax.value_and_grad(lambda p: loss(CFG.replace(remat=remat), p))(params)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_param_shapes_follow_the_config():
    """init_params itself (values, dtypes, shardings) is tested in tests/test_sharding.py."""
    shapes = qwen.param_shapes(QWEN3.replace(param_dtype="bfloat16"))
    attn = shapes["layers"]["attn"]
    assert attn["q"]["kernel"].shape == (2, 24, 4, 10) and attn["q_norm"]["scale"].shape == (2, 10)
    assert "lm_head" not in shapes and "bias" not in attn["q"]
    assert all(s.dtype == jnp.bfloat16 for s in jax.tree.leaves(shapes))
    shapes = qwen.param_shapes(CFG)
    assert shapes["lm_head"]["kernel"].shape == (24, 61) and "q_norm" not in shapes["layers"]["attn"]
    assert shapes["layers"]["attn"]["k"]["bias"].shape == (2, 2, 4)
    axes = qwen.param_axes(CFG)
    is_axes = lambda x: isinstance(x, tuple)  # noqa: E731
    assert jax.tree.structure(jax.tree.map(lambda _: 0, axes, is_leaf=is_axes)) == \
        jax.tree.structure(jax.tree.map(lambda _: 0, shapes))
    assert axes["layers"]["attn"]["o"]["kernel"] == ("layers", "q_heads", "head_dim", "embed")
