"""`linear`: a two-operand einsum (activations x weights) whose backward pass is written out.

Autodiff of `jnp.einsum("BTD,DF->BTF", x, w)` transposes the dot as dot_general(g, x)
followed by a transpose, and XLA:CPU's layout assignment then fuses the elementwise
gradient that feeds it (SwiGLU's, for the MLP) with a transpose into a [F, B*T] layout:
a strided pass over the largest activations of the layer. Written out, the two gradients
are the einsums

    dx = einsum("BTF,DF->BTD", g, w)    dw = einsum("BTD,BTF->DF", x, g)

with the activation gradient g in its natural [B, T, F] layout; only x or w (the smaller
operands) get transposed. On XLA:CPU that makes the 40M-model MLP's forward + backward
~1.4x faster (tools/probe_linear.py, numbers in docs/performance.md); the math, the dots
and their FLOPs are the same as autodiff's, so other backends see the same computation.

The output is named LINEAR_NAME (`jax.ad_checkpoint.checkpoint_name`): remat policies
cannot see the dots inside a custom VJP, so model.remat "save_dots" saves these outputs
by that name (qwen._REMAT_POLICIES).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

LINEAR_NAME = "linear_out"


def linear(eqn: str, x, w, preferred_element_type=None):
    """jnp.einsum(eqn, x, w, preferred_element_type=...) with an explicit VJP.

    eqn: "lhs,rhs->out" where every index letter occurs in exactly two of the three terms
    (contracted or free dims; no batch dims, repeated letters or sums over one operand
    alone): every projection of the model. Other equations fall back to jnp.einsum.
    """
    if not _transposable(eqn):
        return jnp.einsum(eqn, x, w, preferred_element_type=preferred_element_type)
    return checkpoint_name(_linear(eqn, preferred_element_type, x, w), LINEAR_NAME)


@functools.cache
def _transposable(eqn: str) -> bool:
    if "->" not in eqn or "." in eqn:
        return False
    ins, out = eqn.split("->")
    terms = ins.split(",")
    if len(terms) != 2:
        return False
    terms.append(out)
    if any(len(set(t)) != len(t) for t in terms):
        return False
    # No batch dims (a letter in all three terms): the batched dots of attention keep
    # autodiff's VJP (written out, they measured no faster), and remat "save_dots" must
    # not save them; no letter in one term alone (a sum the transposes cannot express).
    return all(sum(c in t for t in terms) == 2 for c in set("".join(terms)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _linear(eqn, preferred_element_type, x, w):
    return jnp.einsum(eqn, x, w, preferred_element_type=preferred_element_type)


def _linear_fwd(eqn, preferred_element_type, x, w):
    return _linear(eqn, preferred_element_type, x, w), (x, w)


def _linear_bwd(eqn, preferred_element_type, res, g):
    x, w = res
    ins, out = eqn.split("->")
    lhs, rhs = ins.split(",")
    dx = jnp.einsum(f"{out},{rhs}->{lhs}", g, w, preferred_element_type=jnp.float32)
    dw = jnp.einsum(f"{lhs},{out}->{rhs}", x, g, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_linear.defvjp(_linear_fwd, _linear_bwd)
