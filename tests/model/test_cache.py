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


@pytest.fixture(scope="module", params=[CFG, QWEN3], ids=["qwen2", "qwen3"])
def model(request):
    return request.param, qwen.init_params(request.param, jax.random.key(1))


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
    for i, r in enumerate(rows):
        ref = qwen.forward(cfg, params, jnp.asarray([r + extra[i]]))[0]
        np.testing.assert_allclose(prefill[i, T - len(r):], ref[:len(r)], atol=1e-5, rtol=0)
        for t in range(3):
            np.testing.assert_allclose(decoded[t][i], ref[len(r) + t], atol=1e-5, rtol=0)


def test_left_padding_without_cache_matches_unpadded(model):
    cfg, params = model
    tokens = jnp.asarray([[0, 0, 4, 5, 6], [7, 8, 9, 10, 11]])
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    padded = qwen.forward(cfg, params, tokens, mask)
    np.testing.assert_allclose(padded[0, 2:], qwen.forward(cfg, params, tokens[:1, 2:])[0],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(padded[1], qwen.forward(cfg, params, tokens[1:])[0], atol=1e-5, rtol=0)


def test_forward_hidden_times_unembed_is_forward(model):
    cfg, params = model
    tokens = jnp.asarray([[1, 2, 3, 4]])
    hidden = qwen.forward_hidden(cfg, params, tokens)
    assert hidden.shape == (1, 4, cfg.hidden_size)
    logits = jnp.einsum("BTD,DV->BTV", hidden, qwen.unembed_matrix(cfg, params))
    np.testing.assert_allclose(logits, qwen.forward(cfg, params, tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_policies_do_not_change_values_or_grads(remat):
    params = qwen.init_params(CFG, jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 6), 0, CFG.vocab_size)

    def loss(cfg, p):
        return jnp.mean(jax.nn.logsumexp(qwen.forward(cfg, p, tokens), axis=-1))

    ref_val, ref_grad = jax.value_and_grad(lambda p: loss(CFG, p))(params)
    val, grad = jax.value_and_grad(lambda p: loss(CFG.replace(remat=remat), p))(params)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_init_params_dtypes_and_shapes():
    cfg = CFG.replace(param_dtype="bfloat16", dtype="bfloat16")
    params = qwen.init_params(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert params["layers"]["attn"]["q"]["kernel"].shape == (2, 24, 6, 4)
    assert "lm_head" not in qwen.init_params(QWEN3, jax.random.key(0))
    logits = qwen.forward(cfg, params, jnp.asarray([[1, 2, 3]]))
    assert logits.dtype == jnp.float32
    axes = qwen.param_axes(cfg)
    assert jax.tree.structure(jax.tree.map(lambda _: 0, axes, is_leaf=lambda x: isinstance(x, tuple))) \
        == jax.tree.structure(jax.tree.map(lambda _: 0, params))
