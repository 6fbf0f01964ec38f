"""model.layer_loop: scanned and unrolled layers compute the same logits and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prorl_jax as pj
from prorl_jax.config import ModelSection
from prorl_jax.errors import ConfigError
from prorl_jax.model import qwen


def _cfg(model_type, **kw):
    return pj.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, model_type=model_type,
                          attention_bias=model_type == "qwen2", qk_norm=model_type == "qwen3",
                          **kw)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_unrolled_layers_equal_the_scan(model_type):
    cfg = _cfg(model_type)
    params = qwen.init_params(cfg, jax.random.key(1))
    # Perturb the norms away from ones, so that a layer's params applied to another layer
    # (an unroll that indexes the stack wrongly) changes the result.
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)
    tokens = jax.random.randint(jax.random.key(3), (2, 11), 0, cfg.vocab_size)
    mask = jnp.ones((2, 11), jnp.int32).at[1, :3].set(0)  # left padding in one row

    def loss(p, c):
        return jnp.sum(jnp.tanh(qwen.forward(c, p, tokens, mask)))

    out = {}
    for loop in ("scan", "unrolled"):
        c = cfg.replace(layer_loop=loop)
        out[loop] = (qwen.forward(c, params, tokens, mask), jax.grad(loss)(params, c))
    (la, ga), (lb, gb) = out["scan"], out["unrolled"]
    scale = float(jnp.max(jnp.abs(la)))
    np.testing.assert_allclose(lb, la, atol=2e-6 * scale, rtol=0)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12, rtol=0)


def test_unrolled_program_has_no_layer_loop():
    """The unrolled form really is a straight line: no while loop over the layers."""
    cfg = _cfg("qwen2")
    params = qwen.init_params(cfg, jax.random.key(0))
    tokens = jnp.ones((1, 8), jnp.int32)
    hlo = {}
    for loop in ("scan", "unrolled"):
        c = cfg.replace(layer_loop=loop)
        hlo[loop] = jax.jit(lambda p, c=c: qwen.forward(c, p, tokens)).lower(params).as_text()
    assert "while" in hlo["scan"]
    assert "while" not in hlo["unrolled"]


def test_auto_unrolls_on_the_cpu_only():
    cfg = _cfg("qwen2")
    assert qwen.layer_unroll(cfg, "cpu") == 3
    assert qwen.layer_unroll(cfg, "gpu") == 1
    assert qwen.layer_unroll(cfg, "tpu") == 1
    assert qwen.layer_unroll(cfg.replace(layer_loop="scan"), "cpu") == 1
    assert qwen.layer_unroll(cfg.replace(layer_loop="unrolled"), "tpu") == 3
    # remat keeps the scan: unrolled, XLA may run the recomputation early (no saving)
    assert qwen.layer_unroll(cfg.replace(remat="full"), "cpu") == 1
    assert qwen.layer_unroll(cfg.replace(remat="full", layer_loop="unrolled"), "cpu") == 3


def test_layer_loop_is_validated_and_reaches_the_model_from_yaml():
    with pytest.raises(ConfigError, match="model.layer_loop must be one of .*'rolled'"):
        _cfg("qwen2", layer_loop="rolled")
    with pytest.raises(ConfigError, match="model.layer_loop"):
        ModelSection(layer_loop="rolled")
    assert ModelSection(layer_loop="scan").numerics()["layer_loop"] == "scan"
