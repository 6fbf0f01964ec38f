"""Attention implementations: blockwise (and splash, cudnn's argument building) == dense."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorl_jax.errors import ConfigError
from prorl_jax.model import attention, qwen
from prorl_jax.model.config import ModelConfig

BASE = dict(vocab_size=61, intermediate_size=40, num_hidden_layers=2, max_position_embeddings=256)


def _model(model_type, heads, kv_heads, head_dim=8):
    qwen3 = model_type == "qwen3"
    return ModelConfig(model_type=model_type, qk_norm=qwen3, attention_bias=not qwen3,
                       hidden_size=heads * head_dim, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, **BASE)


def _loss_and_grads(cfg, params, tokens, mask):
    real = jnp.asarray(mask, bool)[..., None]

    def loss(p):
        logits = qwen.forward(cfg, p, tokens, attention_mask=mask)
        # A nonlinear function of every real logit, so every gradient path counts.
        return jnp.sum(jnp.where(real, jnp.sin(logits), 0.0)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), grads


@pytest.mark.parametrize("model_type,heads,kv_heads,T,bq,bk,left_pad", [
    ("qwen2", 2, 2, 37, 8, 16, 5),   # GQA ratio 1, T not a multiple of either block
    ("qwen3", 4, 2, 29, 16, 8, 0),   # ratio 2, block_q > block_kv
    ("qwen2", 6, 2, 40, 8, 8, 11),   # ratio 3, T a multiple of the blocks
    ("qwen3", 4, 1, 23, 32, 32, 3),  # ratio 4 (MQA), one block larger than T
])
def test_blockwise_matches_dense_logits_and_grads(model_type, heads, kv_heads, T, bq, bk,
                                                  left_pad):
    cfg = _model(model_type, heads, kv_heads)
    params = qwen.init_params(cfg, jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 61, (2, T)).astype(np.int32)
    mask = np.ones((2, T), np.int32)
    mask[1, :left_pad] = 0
    dense, g_dense = _loss_and_grads(cfg.replace(attention_impl="dense"), params, tokens, mask)
    block, g_block = _loss_and_grads(
        cfg.replace(attention_impl="blockwise", attention_block_q=bq, attention_block_kv=bk),
        params, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(block[real], dense[real], atol=2e-6 * np.abs(dense[real]).max())
    for path, gd, gb in zip(jax.tree_util.tree_leaves_with_path(g_dense),
                            jax.tree.leaves(g_dense), jax.tree.leaves(g_block), strict=True):
        scale = float(jnp.abs(gd).max())
        assert float(jnp.abs(gd - gb).max()) <= 1e-5 * scale, jax.tree_util.keystr(path[0])


def _random_qkv(rng, B, T, S, K, G, H):
    q = jnp.asarray(rng.standard_normal((B, T, K, G, H)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, K, S, H)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((B, K, S, H)), jnp.float32)
    return q, k, v


def test_blockwise_prefill_into_a_cache_matches_dense():
    """T queries at cache slots [offset, offset + T) over S > T slots, some not yet real."""
    rng = np.random.default_rng(1)
    B, T, S, K, G, H, offset = 2, 13, 40, 2, 2, 8, 9
    q, k, v = _random_qkv(rng, B, T, S, K, G, H)
    kv_seg = np.zeros((B, S), np.int32)
    kv_seg[:, :offset + T] = 1
    kv_seg[1, :4] = 0  # row 1 was left-padded at its prefill
    mask = attention.AttnMask(jnp.ones((B, T), jnp.int32), jnp.asarray(kv_seg),
                              jnp.asarray(offset, jnp.int32))
    dense = attention.attend(q, k, v, mask, impl="dense")
    block = attention.attend(q, k, v, mask, impl="blockwise", block_q=4, block_kv=8)
    np.testing.assert_allclose(block, dense, atol=2e-6 * float(jnp.abs(dense).max()))


def test_blockwise_prefill_then_decode_equals_full_forward():
    cfg = _model("qwen2", 4, 2).replace(attention_impl="blockwise", attention_block_q=4,
                                        attention_block_kv=8)
    params = qwen.init_params(cfg, jax.random.key(2))
    tokens = np.random.default_rng(2).integers(0, 61, (2, 15)).astype(np.int32)
    full = np.asarray(qwen.forward(cfg.replace(attention_impl="dense"), params, tokens))
    cache = qwen.init_cache(cfg, 2, 24)
    pre, cache = qwen.forward(cfg, params, tokens[:, :11], cache=cache)
    steps = [pre]
    for t in range(11, 15):
        logits, cache = qwen.forward(cfg, params, tokens[:, t:t + 1], cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-6 * np.abs(full).max())


def test_block_bounds_are_exactly_the_causal_tiles():
    """The loops visit a tile iff some query of it may see some key of it."""
    for offset in (0, 3, 17):
        for bq, bk in ((4, 4), (4, 8), (8, 4), (5, 3)):
            nq, nk = 6, 9
            for i in range(nq):
                needed = [j for j in range(nk) if j * bk <= offset + (i + 1) * bq - 1]
                assert int(attention._last_kv_block(offset, i, bq, bk, nk)) == len(needed)
            for j in range(nk):
                needed = [i for i in range(nq) if offset + (i + 1) * bq - 1 >= j * bk]
                first = int(attention._first_q_block(offset, j, bq, bk, nq))
                assert list(range(first, nq)) == needed


def _segment_case(rng):
    B, T, K, G, H = 2, 150, 2, 2, 16
    q, k, v = _random_qkv(rng, B, T, T, K, G, H)
    seg = np.ones((B, T), np.int32)
    seg[0, 60:110] = 2
    seg[0, 110:] = 0  # right padding of a packed row
    seg[1, :30] = 0  # left padding
    seg = jnp.asarray(seg)
    return q, k, v, attention.AttnMask(seg, seg, jnp.zeros((), jnp.int32)), seg


def test_splash_in_interpret_mode_matches_dense():
    """The Pallas TPU kernel runs in interpret mode on CPU: forward and gradients."""
    q, k, v, mask, seg = _segment_case(np.random.default_rng(3))
    real = (seg > 0)[..., None, None, None]

    def run(impl, **kw):
        def f(q, k, v):
            out = attention.attend(q, k, v, mask, impl=impl, block_q=128, block_kv=128, **kw)
            return jnp.sum(jnp.where(real, jnp.sin(out), 0.0)), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, dense), g_dense = run("dense")
    (_, splash), g_splash = run("splash", interpret=True)
    np.testing.assert_allclose(jnp.where(real, splash, 0), jnp.where(real, dense, 0),
                               atol=2e-6 * float(jnp.abs(dense).max()))
    for gd, gs in zip(g_dense, g_splash, strict=True):
        assert float(jnp.abs(gd - gs).max()) <= 1e-5 * float(jnp.abs(gd).max())


@pytest.mark.parametrize("causal_only", [True, False])
def test_cudnn_arguments_through_xla(causal_only):
    """cuDNN is GPU-only; its argument building (is_causal, or a segment mask) is checked by
    running the same jax.nn.dot_product_attention call with implementation='xla'."""
    q, k, v, mask, seg = _segment_case(np.random.default_rng(4))
    if causal_only:
        ones = jnp.ones_like(seg)
        mask = attention.AttnMask(ones, ones, jnp.zeros((), jnp.int32), causal_only=True)
        seg = ones
    dense = attention.attend(q, k, v, mask, impl="dense")
    got = attention._cudnn(q, k, v, mask, q.shape[-1] ** -0.5, implementation="xla")
    real = (seg > 0)[..., None, None, None]
    np.testing.assert_allclose(jnp.where(real, got, 0), jnp.where(real, dense, 0),
                               atol=2e-6 * float(jnp.abs(dense).max()))


def test_auto_picks_per_backend_and_shape():
    pick = lambda backend, dtype, T, H=128: attention.resolve(  # noqa: E731
        "auto", backend=backend, dtype=dtype, B=1, N=12, T=T, S=T, H=H)
    assert pick("cpu", "float32", 64) == "dense"
    assert pick("cpu", "float32", 128) == "blockwise"
    assert pick("cpu", "float32", 16384) == "blockwise"
    assert pick("gpu", "bfloat16", 4096) == "cudnn"
    assert pick("gpu", "float32", 4096) == "blockwise"  # cuDNN takes no float32
    assert pick("gpu", "bfloat16", 4096, H=12) == "blockwise"  # nor head_dim 12
    assert pick("tpu", "bfloat16", 4096) == "splash"


@pytest.mark.parametrize("impl,backend,dtype,words", [
    ("cudnn", "cpu", "bfloat16", "CUDA GPU"),
    ("cudnn", "gpu", "float32", "bfloat16 or float16"),
    ("splash", "cpu", "float32", "TPU"),
    ("flash", "cpu", "float32", "must be one of"),
])
def test_impl_the_backend_lacks_is_a_config_error(impl, backend, dtype, words):
    with pytest.raises(ConfigError, match="model.attention_impl") as err:
        attention.resolve(impl, backend=backend, dtype=dtype, B=1, N=1, T=8, S=8, H=64)
    assert words in str(err.value)


def test_forward_with_an_impl_this_backend_lacks_fails_naming_the_key():
    cfg = _model("qwen2", 2, 2)
    shapes, tokens = qwen.param_shapes(cfg), jax.ShapeDtypeStruct((1, 4), jnp.int32)
    cfg = cfg.replace(attention_impl="cudnn")
    with pytest.raises(ConfigError, match="model.attention_impl='cudnn'"):  # raised at trace time
        jax.eval_shape(lambda p, t: qwen.forward(cfg, p, t), shapes, tokens)


def test_config_fields_are_checked():
    with pytest.raises(ConfigError, match="model.attention_impl"):
        _model("qwen2", 2, 2).replace(attention_impl="flash")
    with pytest.raises(ConfigError, match="model.attention_block_kv"):
        _model("qwen2", 2, 2).replace(attention_block_kv=0)
    cfg = _model("qwen3", 4, 2).replace(attention_impl="blockwise")
    assert ModelConfig.from_hf_config(cfg.to_hf_config()).attention_impl == "auto"
    assert ModelConfig.from_hf_config(cfg.to_hf_config(), attention_impl="dense").attention_impl \
        == "dense"


def _grad_temp_bytes(impl, T):
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1 << 15, attention_impl=impl)

    def loss(p, tokens):
        return jnp.sum(qwen.forward(cfg, p, tokens)[..., 0])

    compiled = jax.jit(jax.grad(loss)).lower(
        qwen.param_shapes(cfg), jax.ShapeDtypeStruct((1, T), jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_blockwise_gradient_memory_is_linear_in_length():
    """Compiled (never run) temp memory of a gradient: blockwise grows ~4x from 4k to 16k
    tokens; dense grows ~T^2 (checked on 1k -> 4k to keep the compile cheap)."""
    block = _grad_temp_bytes("blockwise", 16384) / _grad_temp_bytes("blockwise", 4096)
    dense = _grad_temp_bytes("dense", 4096) / _grad_temp_bytes("dense", 1024)
    assert block <= 5.0, block
    assert dense >= 10.0, dense  # the measure sees a quadratic tensor when there is one


def test_blockwise_packed_segments_match_dense_with_grads():
    """Packed + padded rows at the attention level (tiles that straddle segment edges and
    tiles the segment-range test skips): real outputs and dq, dk, dv as dense."""
    q, k, v, mask, seg = _segment_case(np.random.default_rng(5))
    real = (seg > 0)[..., None, None, None]

    def run(impl):
        def f(q, k, v):
            out = attention.attend(q, k, v, mask, impl=impl, block_q=32, block_kv=16)
            return jnp.sum(jnp.where(real, jnp.sin(out), 0.0)), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, dense), g_dense = run("dense")
    (_, block), g_block = run("blockwise")
    np.testing.assert_allclose(jnp.where(real, block, 0), jnp.where(real, dense, 0),
                               atol=2e-6 * float(jnp.abs(dense).max()))
    for gd, gb in zip(g_dense, g_block, strict=True):
        assert float(jnp.abs(gd - gb).max()) <= 1e-5 * float(jnp.abs(gd).max())


def test_yaml_keys_reach_the_model_config():
    from prorl_jax.config import load_config

    cfg = load_config(None, ["model.attention_impl=blockwise", "model.attention_block_q=128"])
    numerics = cfg.model.numerics()
    assert ModelConfig(**numerics).attention_impl == "blockwise"
    assert ModelConfig(**numerics).attention_block_q == 128
    with pytest.raises(ConfigError, match="model.attention_impl"):
        load_config(None, ["model.attention_impl=flash"])


def test_blockwise_sharded_equals_single_device():
    """Under the training rules on a (2, 2, 2) mesh of fake CPU devices (batch over data x
    fsdp, heads over tensor) the block loops give the single-device logits."""
    from prorl_jax import sharding

    cfg = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, attention_impl="blockwise",
                      attention_block_q=4, attention_block_kv=8)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype),
                          qwen.param_shapes(cfg))
    tokens = rng.integers(0, 128, (8, 13)).astype(np.int32)
    mask = np.ones((8, 13), np.int32)
    mask[1, :2] = mask[5, :7] = 0
    ref = np.asarray(qwen.forward(cfg, params, tokens, mask))
    mesh = sharding.make_mesh(2, 2, 2)
    rules = sharding.TRAIN_RULES
    params = jax.device_put(params, qwen.param_shardings(cfg, mesh, rules))
    with sharding.use_rules(mesh, rules):
        got = qwen.forward(cfg, params, sharding.shard_batch(tokens, mesh, rules, ("batch", "seq")),
                           sharding.shard_batch(mask, mesh, rules, ("batch", "seq")))
    assert len(got.sharding.device_set) == 8
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], ref[real], atol=1e-5, rtol=0)


def test_blockwise_bfloat16_is_close_to_float32_dense():
    """bf16 inputs: the blockwise output and gradients stay within bf16 rounding of the
    float32 reference (scores, max and sum are float32 inside)."""
    q, k, v, mask, seg = _segment_case(np.random.default_rng(6))
    real = (seg > 0)[..., None, None, None]

    def run(impl, dtype):
        def f(q, k, v):
            out = attention.attend(q, k, v, mask, impl=impl, block_q=32, block_kv=64)
            return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0.0) ** 2), out
        args = [x.astype(dtype) for x in (q, k, v)]
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(*args)

    (_, ref), g_ref = run("dense", jnp.float32)
    (_, got), g_got = run("blockwise", jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    err = jnp.abs(jnp.where(real, got.astype(jnp.float32) - ref, 0)).max()
    assert float(err) <= 2e-2 * float(jnp.abs(ref).max())
    for gr, gg in zip(g_ref, g_got, strict=True):
        assert gg.dtype == jnp.bfloat16
        assert float(jnp.abs(gg.astype(jnp.float32) - gr).max()) <= 3e-2 * float(jnp.abs(gr).max())


def test_auto_logs_its_pick_once_per_shape(caplog):
    caplog.set_level("DEBUG", logger="prorl_jax.model.attention")
    for _ in range(3):
        attention.resolve("auto", backend="cpu", dtype="float32", B=3, N=5, T=777, S=777, H=8)
    picks = [r for r in caplog.records if "T=777" in r.getMessage()]
    assert len(picks) == 1 and "blockwise" in picks[0].getMessage()


def test_trainer_refuses_an_impl_the_backend_lacks_before_writing(tmp_path):
    from prorl_jax.config import load_config
    from prorl_jax.rl.trainer import Trainer

    cfg = load_config(None, ["model.attention_impl=splash"])
    with pytest.raises(ConfigError, match="model.attention_impl='splash' needs a TPU"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
