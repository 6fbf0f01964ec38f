"""model.linear: the explicit-VJP einsum equals jnp.einsum's values and gradients, and
remat "save_dots" still saves the projection outputs (by name)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prorl_jax as pj
from prorl_jax.model import qwen
from prorl_jax.model.linear import _transposable, linear

CASES = [
    ("BTD,DF->BTF", (2, 5, 8), (8, 12)),
    ("BTF,FD->BTD", (2, 5, 12), (12, 8)),
    ("BTD,DNH->BTNH", (2, 5, 8), (8, 3, 4)),  # q / k / v projections
    ("BTNH,NHD->BTD", (2, 5, 3, 4), (3, 4, 8)),  # the output projection
    ("BTD,DV->BTV", (1, 7, 8), (8, 11)),  # the lm head
]


@pytest.mark.parametrize("eqn,xs,ws", CASES)
@pytest.mark.parametrize("pet", [None, jnp.float32])
def test_values_and_grads_match_einsum(eqn, xs, ws, pet):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
    out_shape = jnp.einsum(eqn, x, w).shape
    cot = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(eqn, x, w, preferred_element_type=pet)) * cot)

    ref = jax.value_and_grad(loss(jnp.einsum), argnums=(0, 1))(x, w)
    got = jax.jit(jax.value_and_grad(loss(linear), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for g, r in zip(got[1], ref[1]):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_bf16_gradients_keep_dtypes():
    x = jnp.ones((2, 3, 8), jnp.bfloat16)
    w = jnp.ones((8, 4), jnp.bfloat16)
    gx, gw = jax.grad(lambda x, w: linear("BTD,DF->BTF", x, w,
                                          preferred_element_type=jnp.float32).sum(),
                      argnums=(0, 1))(x, w)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(gx, np.float32), 4.0)
    np.testing.assert_array_equal(np.asarray(gw, np.float32), 6.0)


def test_other_equations_fall_back_to_einsum():
    assert _transposable("BTD,DF->BTF")
    assert not _transposable("BKGTS,BKSH->BKGTH")  # batch dims (attention) keep autodiff
    assert not _transposable("BTD,DF->BF")  # T summed in x alone
    assert not _transposable("BTT,TF->BF")
    assert not _transposable("BTD,DF,FG->BTG")
    assert not _transposable("...D,DF->...F")
    x = jnp.arange(24.0).reshape(2, 3, 4)
    w = jnp.ones((4, 5))
    g = jax.grad(lambda x: linear("BTD,DF->BF", x, w).sum())(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.einsum("BTD,DF->BF", x, w).sum())(x))


def _remat_temp(policy_name, policy=None):
    """Compiled temp bytes of the gradient of a 4-layer model's hidden states.

    Scanned layers: the scan stacks what the policy saves for all 4 layers before the
    backward starts, so the saved residuals show in the peak (unrolled, XLA interleaves
    their lifetimes with the backward and the peak says less about the policy)."""
    cfg = pj.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=96,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         remat=policy_name, layer_loop="scan")
    params = qwen.init_params(cfg, jax.random.key(0))
    tokens = jnp.ones((4, 64), jnp.int32)
    f = lambda p: jnp.sum(jnp.tanh(qwen.forward_hidden(cfg, p, tokens)))  # noqa: E731
    saved = qwen._REMAT_POLICIES[policy_name]
    qwen._REMAT_POLICIES[policy_name] = policy or saved
    jax.clear_caches()  # the policy is read when the model's jitted forward is traced
    try:
        g = jax.jit(jax.grad(f)).lower(params).compile()
    finally:
        qwen._REMAT_POLICIES[policy_name] = saved
        jax.clear_caches()
    return g.memory_analysis().temp_size_in_bytes


def test_save_dots_saves_the_projection_outputs():
    """A custom VJP hides its dots from dots_with_no_batch_dims_saveable: with that policy
    alone "save_dots" saves nothing and compiles to what "full" does. By name it keeps the
    projection outputs, at least the MLP's [4, 64, 96] gate and up of 3 of the 4 layers."""
    full = _remat_temp("full")
    blind = _remat_temp("save_dots", jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    save_dots = _remat_temp("save_dots")
    assert blind == full
    assert save_dots >= full + 3 * 2 * 4 * 64 * 96 * 4
