"""Qwen2 / Qwen2.5 / R1-Distill-Qwen / Qwen3 dense decoder: Flax linen modules + pure forward.

Params are a plain nested dict with the decoder layers stacked on a leading L axis (one
`nn.scan` over layers keeps compile time flat in depth):

    embed/embedding               [V, D]
    layers/attn_norm/scale        [L, D]
    layers/attn/{q,k,v}/kernel    [L, D, N|K, H]    (+ bias [L, N|K, H] when attention_bias)
    layers/attn/o/kernel          [L, N, H, D]
    layers/attn/{q,k}_norm/scale  [L, H]            (qk_norm, Qwen3)
    layers/mlp_norm/scale         [L, D]
    layers/mlp/{gate,up}/kernel   [L, D, F]
    layers/mlp/down/kernel        [L, F, D]
    final_norm/scale              [D]
    lm_head/kernel                [D, V]            (absent when tie_word_embeddings)

The KV cache is an explicit pytree argument and return value (`KVCache`), stacked per layer
the same way. For decode loops, `split_layers` / `split_cache` turn both into tuples of
per-layer arrays (see split_layers for why). Numerics follow transformers' eager
Qwen2/Qwen3 attention: RMSNorm in float32, half-split RoPE computed in float32, attention
scores and softmax in float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from prorl_jax import sharding
from prorl_jax.model import attention
from prorl_jax.model.config import ModelConfig
from prorl_jax.model.linear import LINEAR_NAME, linear

Params = dict[str, Any]

_INIT_STD = 0.02  # transformers' initializer_range default for Qwen


def _dtype(name: str):
    return jnp.dtype(name)


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, one slot per position written so far.

    k, v:   [L, B, K, S, H] compute dtype; kv-head-major so that each (row, kv head)
            holds its S keys contiguously and the attention is one batched matmul over
            (B, K) without transposing the cache. With split layers (split_cache) k and v
            are tuples of L arrays [B, K, S, H].
    mask:   bool [B, S]      slot holds a real (non-padding) token
    index:  int32 []         next slot to write (the same for every row), or int32 [B],
                             a next slot per row (the continuous engine, whose rows are
                             at different steps)
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; statistics in float32 as transformers does."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",),
                       self.param_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return y * scale.astype(self.dtype)


# Contraction (input) dims of each projection's kernel; the rest are output dims.
PROJ_IN_NDIM = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


class Proj(nn.Module):
    """A linear map written as one einsum, with an optional bias over the output dims.

    The kernel is input-major ("kernel" [in..., out...]) as stored and trained, or, with
    out_major (the "decode" layout, `decode_layout`), output-major ("kernel_out_major"
    [out..., in...]), which `out_major_dot` multiplies faster at decode batch sizes on
    XLA:CPU. The layout is the caller's static choice, never read off the params.
    """

    eqn: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    bias_ndim: int  # 0 = no bias; else the bias covers the kernel's last bias_ndim dims
    dtype: Any
    param_dtype: Any
    out_major: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(_INIT_STD)
        if self.out_major:
            n_in = PROJ_IN_NDIM[self.name]
            w = _param(self, "kernel_out_major", init, self.shape[n_in:] + self.shape[:n_in],
                       self.axes[n_in:] + self.axes[:n_in], self.param_dtype)
            y = out_major_dot(x, w.astype(self.dtype), n_in)
        else:
            w = _param(self, "kernel", init, self.shape, self.axes, self.param_dtype)
            y = linear(self.eqn, x, w.astype(self.dtype))
        if self.bias_ndim:
            b = _param(self, "bias", nn.initializers.zeros, self.shape[-self.bias_ndim:],
                       self.axes[-self.bias_ndim:], self.param_dtype)
            y = y + b.astype(self.dtype)
        return y


def out_major_dot(x, w, in_ndim: int, transpose_out: bool = True,
                  preferred_element_type=None):
    """x [..., I...] times an output-major kernel w [O..., I...] -> [..., O...].

    Computed as the product w x^T [O, M] (M = the leading dims of x flattened): with a few
    rows M and weights that are not in cache, XLA:CPU's GEMM runs this orientation up to
    1.6x faster than x w (it streams each weight row once; measured in
    docs/performance.md). The optimization barrier stops layout assignment from folding
    the final transpose into the dot, which would bring back the slow orientation. With
    transpose_out=False the result stays [O..., M] (feature-major).
    """
    lead, out = x.shape[:x.ndim - in_ndim], w.shape[:w.ndim - in_ndim]
    n_in, n_out = math.prod(x.shape[x.ndim - in_ndim:]), math.prod(out)
    yt = jax.lax.dot_general(w.reshape(n_out, n_in), x.reshape(-1, n_in),
                             (((1,), (1,)), ((), ())),
                             preferred_element_type=preferred_element_type)  # [O, M]
    yt = jax.lax.optimization_barrier(yt)
    if not transpose_out:
        return yt
    return yt.T.reshape(*lead, *out)


def _rope(x, sin, cos):
    """Half-split rotary embedding (transformers' rotate_half convention).

    x: [B, T, N, H]; sin, cos: [B, T, H] in x's dtype.
    """
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nn.Module):
    cfg: ModelConfig
    out_major: bool = False  # the "decode" layout's kernels (Proj.out_major)

    @nn.compact
    def __call__(self, x, sin, cos, mask, kv, layer, index):
        """One attention block.

        x [B, T, D]; sin/cos [B, T, H]; mask an attention.AttnMask; kv None (no cache, S = T),
        the stacked cache (k, v), each [L, B, K, S, H], with layer int32 [] this layer's
        row of it, or (split layers, layer None) this layer's own (k, v) [B, K, S, H];
        index int32 [] (first slot to write). Returns the output [B, T, D] and the
        updated kv (None without a cache).
        """
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        D, N, K, H = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        G = N // K
        bias = 2 if cfg.attention_bias else 0
        proj = functools.partial(Proj, dtype=dt, param_dtype=pdt, out_major=self.out_major)
        q = proj("BTD,DNH->BTNH", (D, N, H), ("embed", "q_heads", "head_dim"), bias, name="q")(x)
        k = proj("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"), bias, name="k")(x)
        v = proj("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"), bias, name="v")(x)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="k_norm")(k)
        q = sharding.constrain(_rope(q, sin, cos), ("batch", "seq", "act_q_heads", "act_head_dim"))
        k = sharding.constrain(_rope(k, sin, cos), ("batch", "seq", "act_kv_heads", "act_head_dim"))
        v = sharding.constrain(v, ("batch", "seq", "act_kv_heads", "act_head_dim"))
        B, T = q.shape[:2]
        q = q.reshape(B, T, K, G, H)  # [B, T, K, G, H]: GQA without repeating the kv heads

        with jax.named_scope("attention"):
            if kv is None:
                keys, values, new_kv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), None
            else:
                keys, values, new_kv = _write_cache(kv, k, v, layer, index)  # [B, K, S, H]
                keys, values = keys.astype(dt), values.astype(dt)
            # Decode (one query per row: scores [B, K, G, 1, S]) and rows that each write at
            # their own slot (the engine's per-row index) keep the dense path.
            impl = ("dense" if kv is not None and (T == 1 or mask.q_offset.ndim == 1)
                    else cfg.attention_impl)
            out = attention.attend(q, keys, values, mask, impl=impl,
                                   block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv)
            out = out.reshape(B, T, N, H)
        out = proj("BTNH,NHD->BTD", (N, H, D), ("q_heads", "head_dim", "embed"), 0, name="o")(out)
        return out, new_kv


_CACHE_AXES = ("layers", "batch", "act_kv_heads", "cache_seq", "act_head_dim")


def _write_cache(kv, k, v, layer, index):
    """Writes one layer's new k, v [B, T, K, H] at slots [index, index + T) of the cache.

    kv is either the stacked pair [L, B, K, S, H] (layer = this layer's row; the pair is
    the layer scan's carry, so each call updates T slots of one layer in place, where
    taking it as scanned input and output would make XLA build a fresh [L, B, K, S, H]
    pair and copy the whole cache every step) or, with split layers (layer None), this
    layer's own pair [B, K, S, H], which the attention then reads without slicing it out
    of a larger buffer. Returns this layer's keys and values [B, K, S, H] and the new kv.
    """
    k_c, v_c = kv
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
    if jnp.ndim(index) == 1:
        return _write_cache_rows(k_c, v_c, k, v, layer, index)
    if layer is None:
        axes, start = _CACHE_AXES[1:], (0, 0, index, 0)
    else:
        axes, start = _CACHE_AXES, (layer, 0, 0, index, 0)
        k, v = k[None], v[None]
    k_c = sharding.constrain(jax.lax.dynamic_update_slice(k_c, k.astype(k_c.dtype), start), axes)
    v_c = sharding.constrain(jax.lax.dynamic_update_slice(v_c, v.astype(v_c.dtype), start), axes)
    if layer is None:
        return k_c, v_c, (k_c, v_c)
    keys = jax.lax.dynamic_index_in_dim(k_c, layer, 0, keepdims=False)  # [B, K, S, H]
    values = jax.lax.dynamic_index_in_dim(v_c, layer, 0, keepdims=False)
    return keys, values, (k_c, v_c)


def _write_cache_rows(k_c, v_c, k, v, layer, index):
    """_write_cache with a write slot per row: row b's k, v [K, T, H] go to slots
    [index[b], index[b] + T) (index int32 [B]; the continuous engine's slots are at
    different steps). A vmapped dynamic_update_slice, which XLA lowers to an in-place
    scatter of T slots per row."""
    if layer is None:
        axes = _CACHE_AXES[1:]

        def put(c, x, i):  # c [K, S, H], x [K, T, H]
            return jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, i, 0))
        put_rows = jax.vmap(put)
    else:
        axes = _CACHE_AXES

        def put(c, x, i):  # c [L, K, S, H] (the stacked layers of one row), x [K, T, H]
            return jax.lax.dynamic_update_slice(c, x[None].astype(c.dtype), (layer, 0, i, 0))
        put_rows = jax.vmap(put, in_axes=(1, 0, 0), out_axes=1)
    k_c = sharding.constrain(put_rows(k_c, k, index), axes)
    v_c = sharding.constrain(put_rows(v_c, v, index), axes)
    if layer is None:
        return k_c, v_c, (k_c, v_c)
    keys = jax.lax.dynamic_index_in_dim(k_c, layer, 0, keepdims=False)  # [B, K, S, H]
    values = jax.lax.dynamic_index_in_dim(v_c, layer, 0, keepdims=False)
    return keys, values, (k_c, v_c)


class MLP(nn.Module):
    cfg: ModelConfig
    out_major: bool = False  # the "decode" layout: gate_up_out_major / down_out_major

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        D, F = cfg.hidden_size, cfg.intermediate_size
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        if self.out_major:
            return self._decode_layout(x, D, F, dt, pdt)
        proj = functools.partial(Proj, dtype=dt, param_dtype=pdt, bias_ndim=0)
        gate = proj("BTD,DF->BTF", (D, F), ("embed", "mlp"), name="gate")(x)
        up = proj("BTD,DF->BTF", (D, F), ("embed", "mlp"), name="up")(x)
        h = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"))  # [B, T, F]
        return proj("BTF,FD->BTD", (F, D), ("mlp", "embed"), name="down")(h)

    def _decode_layout(self, x, D, F, dt, pdt):
        """The MLP on decode_layout params: gate and up as one output-major [2, F, D]
        matrix, the hidden units kept feature-major [F, M] into the down product, so
        that the only transpose is the [D, M] result's."""
        init = nn.initializers.normal(_INIT_STD)
        w_gate_up = _param(self, "gate_up_out_major", init, (2, F, D), (None, "mlp", "embed"), pdt)
        w_down = _param(self, "down_out_major", init, (D, F), ("embed", "mlp"), pdt)
        gate_up = out_major_dot(x, w_gate_up.astype(dt), 1, transpose_out=False)  # [2F, M]
        h = jax.nn.silu(gate_up[:F]) * gate_up[F:]  # [F, M]
        y = jax.lax.dot_general(w_down.astype(dt), h, (((1,), (0,)), ((), ())))  # [D, M]
        return jax.lax.optimization_barrier(y).T.reshape(*x.shape[:-1], D)


class Block(nn.Module):
    """One pre-norm decoder layer; scanned, so it returns (carry, per-layer output).

    The carry is (x [B, T, D], kv): kv is None, or the whole stacked cache of which row
    `layer` (the scanned input) is read and written, or with split layers (layer None)
    this layer's own cache.
    """

    cfg: ModelConfig
    out_major: bool = False  # the "decode" layout (see decode_layout)

    @nn.compact
    def __call__(self, carry, layer, sin, cos, mask, index):
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        x, kv = carry
        with jax.named_scope("attn"):
            h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="attn_norm")(x)
            h, kv = Attention(cfg, self.out_major, name="attn")(h, sin, cos, mask, kv, layer,
                                                                index)
            x = x + h
        with jax.named_scope("mlp"):
            h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="mlp_norm")(x)
            x = x + MLP(cfg, self.out_major, name="mlp")(h)
        return (sharding.constrain(x, ("batch", "seq", "act_embed")), kv), None


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    # Keep projection / MLP matmul outputs; recompute attention scores (batched dots).
    # The projections are `linear` (custom VJP), whose dots the policy cannot see: their
    # outputs are saved by name.
    "save_dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(LINEAR_NAME)),
}


class Qwen(nn.Module):
    """Embedding, decoder layers, final norm. Returns normed hidden states.

    Layers are one `nn.scan` over stacked params, or with split_layers an unrolled loop
    over per-layer params (the form `split_layers()` makes for decode loops).
    """

    cfg: ModelConfig
    split_layers: bool = False
    out_major: bool = False  # the "decode" layout (requires split_layers)

    @nn.compact
    def __call__(self, tokens, positions, mask, kv, index):
        cfg = self.cfg
        dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        emb = _param(self, "embedding", nn.initializers.normal(_INIT_STD),
                     (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt)
        if not cfg.tie_word_embeddings and self.is_initializing():
            # Created here so init makes it; `forward` applies it (see _logits).
            _param(self, "lm_head", nn.initializers.normal(_INIT_STD),
                   (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)
        x = sharding.constrain(jnp.take(emb, tokens, axis=0).astype(dt), ("batch", "seq", "act_embed"))

        with jax.named_scope("rope"):
            H = cfg.head_dim
            inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, H, 2, dtype=np.float32) / H))
            angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
            angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, H]
            sin, cos = jnp.sin(angles).astype(dt), jnp.cos(angles).astype(dt)

        unroll = 1 if self.split_layers else layer_unroll(cfg, jax.default_backend())
        block = Block
        if cfg.remat != "none":
            # Inside a rolled scan the recomputation cannot be merged with the forward (CSE)
            # anyway; in straight-line code it could be, so there the barriers stay.
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat],
                             prevent_cse=self.split_layers or unroll > 1)
        if self.split_layers:
            # One module per layer (params "layers_0", ...; see split_layers) and, with a
            # cache, one k/v buffer per layer: no per-layer slicing of stacked arrays.
            new_k, new_v = [], []
            for i in range(cfg.num_hidden_layers):
                layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                (x, layer_kv), _ = block(cfg, self.out_major, name=f"layers_{i}")(
                    (x, layer_kv), None, sin, cos, mask, index)
                if layer_kv is not None:
                    new_k.append(layer_kv[0])
                    new_v.append(layer_kv[1])
            new_kv = None if kv is None else (tuple(new_k), tuple(new_v))
        else:
            layers = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"},
                unroll=unroll,
            )(cfg, self.out_major, name="layers")
            (x, new_kv), _ = layers((x, kv), jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32),
                                    sin, cos, mask, index)
        x = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")(x)
        return x, new_kv


def layer_unroll(cfg: ModelConfig, backend: str) -> int:
    """How many layers one iteration of the layer scan runs (`cfg.layer_loop`).

    "scan" (1): one compiled layer body, looped; compile time independent of depth, the
    form for accelerators at 28+ layers. "unrolled" (L): the same scanned params and the
    same math in a straight line, which XLA:CPU runs faster: the scan's loop slices each
    layer's weights and residuals out of stacked buffers and writes the stacked gradients
    back, copies that the unrolled program avoids (the 40M train step on one core: 4.66 s
    -> 4.22 s, docs/performance.md), for ~25-60% more compile time. "auto": unrolled on
    the CPU without remat, scanned otherwise (not measured on GPU / TPU, where the scan is
    the peers' default).
    """
    loop = cfg.layer_loop
    if loop == "auto":
        # Not with remat: in straight-line code XLA:CPU schedules the recomputed forward
        # early and the remat saves little (measured, remat "full", tests/rl/test_plan.py's
        # shapes: the micro-batch update took 1048 MB unrolled against 355 MB scanned at
        # T 2k dense, 510 MB against 225 MB at 8k blockwise).
        loop = "unrolled" if backend == "cpu" and cfg.remat == "none" else "scan"
    return cfg.num_hidden_layers if loop == "unrolled" else 1


def _restructure(variables: dict) -> Params:
    """Flax names the top-level params 'embedding' / 'lm_head'; give them their own groups."""
    p = dict(variables["params"])
    out = {"embed": {"embedding": p.pop("embedding")}}
    if "lm_head" in p:
        out["lm_head"] = {"kernel": p.pop("lm_head")}
    out.update(p)
    return out


def _to_flax(params: Params) -> dict:
    p = {k: v for k, v in params.items() if k not in ("embed", "lm_head", "layers")}
    if _is_split(params):
        p.update({f"layers_{i}": layer for i, layer in enumerate(params["layers"])})
    else:
        p["layers"] = params["layers"]
    p["embedding"] = params["embed"]["embedding"]
    return {"params": p}  # the lm head is applied outside the module (_logits)


def _boxed_init(cfg: ModelConfig, rng):
    dummy = jnp.zeros((1, 1), jnp.int32)
    ones = jnp.ones((1, 1), jnp.int32)
    mask = attention.AttnMask(ones, ones, jnp.zeros((), jnp.int32), causal_only=True)
    return Qwen(cfg).init(rng, dummy, dummy, mask, None, 0)


def param_axes(cfg: ModelConfig) -> Params:
    """Logical axis names of every param: same tree as `init_params`, leaves tuples of names."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0))
    names = jax.tree.map(lambda b: tuple(b.names), boxed,
                         is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return _restructure(names)


def param_shapes(cfg: ModelConfig) -> Params:
    """jax.ShapeDtypeStruct of every param (no memory allocated)."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0))
    return _restructure(nn.meta.unbox(boxed))


def param_shardings(cfg: ModelConfig, mesh, rules=None) -> Params:
    """NamedSharding of every param under `rules` (default TRAIN_RULES), uneven dims replicated."""
    rules = sharding.TRAIN_RULES if rules is None else rules
    return sharding.shardings_for(param_axes(cfg), mesh, rules, param_shapes(cfg))


def init_params(cfg: ModelConfig, rng: jax.Array, mesh=None, rules=None) -> Params:
    """Random params (normal(0.02) matrices, unit norms, zero biases) in cfg.param_dtype.

    Args:
      cfg: the architecture.
      rng: a jax PRNG key.
      mesh: with a mesh, each param is created directly in its sharding (no full host copy).
      rules: sharding rules (default sharding.TRAIN_RULES).
    Returns:
      the params dict described in the module docstring.
    """
    def init(key):
        return _restructure(nn.meta.unbox(_boxed_init(cfg, key)))

    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(rng)


def cache_axes() -> KVCache:
    """Logical axis names of the KVCache fields (a KVCache whose leaves are tuples)."""
    return KVCache(k=_CACHE_AXES, v=_CACHE_AXES, mask=("batch", "cache_seq"), index=())


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None, mesh=None,
               rules=None) -> KVCache:
    """An empty KV cache.

    Args:
      cfg: the architecture.
      batch: B rows.
      max_len: S slots (prompt + generated tokens must fit; writes past S are clamped by XLA).
      dtype: k/v dtype (default cfg.dtype).
      mesh, rules: with a mesh, the cache is created in its sharding (default SAMPLE_RULES).
    Returns:
      KVCache with k, v zeros [L, B, K, S, H], mask all False [B, S], index 0.
    """
    dt = _dtype(dtype or cfg.dtype)
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)

    def make():
        return KVCache(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt),
                       mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

    if mesh is None:
        return make()
    rules = sharding.SAMPLE_RULES if rules is None else rules
    shardings = sharding.shardings_for(cache_axes(), mesh, rules, jax.eval_shape(make))
    return jax.jit(make, out_shardings=shardings)()


def _is_split(params: Params) -> bool:
    return isinstance(params["layers"], tuple)


def split_layers(params: Params) -> Params:
    """The same params with "layers" as a tuple of L per-layer dicts (no leading L axis).

    `forward` runs such params as an unrolled loop of L layers instead of a scan. A scan
    slices each layer's weights (and cache) out of the stacked arrays on every call, which
    XLA:CPU does by copying them; in a decode loop that copy costs as much as the matmuls
    themselves at small batch. Split once outside the loop, each layer's weights are
    their own buffers. Compile time then grows with depth, so use it for decode steps.
    """
    if _is_split(params):
        return params
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = tuple(jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(n))
    return {**params, "layers": layers}


def split_cache(cache: KVCache) -> KVCache:
    """The same cache with k and v as tuples of L arrays [B, K, S, H], for split params."""
    if isinstance(cache.k, tuple):
        return cache
    n = cache.k.shape[0]
    return cache.replace(k=tuple(cache.k[i] for i in range(n)),
                         v=tuple(cache.v[i] for i in range(n)))


def stack_cache(cache: KVCache) -> KVCache:
    """The inverse of split_cache: k and v stacked to [L, B, K, S, H]."""
    if not isinstance(cache.k, tuple):
        return cache
    return cache.replace(k=jnp.stack(cache.k), v=jnp.stack(cache.v))


def unembed_matrix(cfg: ModelConfig, params: Params, layout: str = "train") -> jax.Array:
    """The lm head [D, V] (the embedding transposed when tied), in cfg.param_dtype, of
    params in `layout` ("train", or "decode" for decode_layout's)."""
    head = params.get("lm_head", {})
    if _check_layout(layout) == "decode":
        return head["kernel_out_major"].T
    if cfg.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return head["kernel"]


LAYOUTS = ("train", "decode")  # weight layouts forward runs on (a static choice)


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def decode_layout(cfg: ModelConfig, params: Params) -> Params:
    """The params as the decode loop runs them: split per layer, kernels output-major.

    Every projection kernel [in..., out...] becomes "kernel_out_major" [out..., in...] and
    the lm head becomes {"kernel_out_major": [V, D]} (the embedding itself when tied);
    `forward(..., layout="decode")` then computes those products as `out_major_dot`.
    Layers are split as in `split_layers`, so the cache must be split too. Make it once
    per policy version, outside the decode loop: it is a transposed copy of every matrix.
    """
    def out_major(group: dict) -> dict:
        group = dict(group)
        for name, n_in in PROJ_IN_NDIM.items():
            if name in group and "kernel" in group[name]:
                proj = dict(group[name])
                w = proj.pop("kernel")
                proj["kernel_out_major"] = w.transpose(*range(n_in, w.ndim), *range(n_in))
                group[name] = proj
        return group

    def mlp(group: dict) -> dict:
        gate_up = jnp.stack([group["gate"]["kernel"].T, group["up"]["kernel"].T])  # [2, F, D]
        return {"gate_up_out_major": gate_up, "down_out_major": group["down"]["kernel"].T}

    split = split_layers(params)
    layers = tuple({**p, "attn": out_major(p["attn"]), "mlp": mlp(p["mlp"])}
                   for p in split["layers"])
    return {**split, "layers": layers,
            "lm_head": {"kernel_out_major": unembed_matrix(cfg, params).T}}


def _rules_key():
    """A hashable snapshot of the active `sharding.use_rules` context (static jit arg)."""
    active = sharding.active_rules()
    if active is None:
        return None
    mesh, rules = active
    return mesh, tuple(sorted(rules.items(), key=lambda kv: kv[0]))


@functools.partial(jax.jit, static_argnames=("cfg", "rules_key", "want_logits", "layout"))
def _run(cfg, params, tokens, attention_mask, positions, cache, segment_ids, *, rules_key,
         want_logits, layout):
    args = (cfg, params, tokens, attention_mask, positions, cache, segment_ids, want_logits,
            layout)
    if rules_key is None:
        return _run_traced(*args)
    mesh, rules = rules_key
    with sharding.use_rules(mesh, dict(rules)):
        return _run_traced(*args)


def segment_positions(segment_ids):
    """int32 [B, T] segment ids of packed rows -> positions [B, T] that restart at 0 where
    a new segment begins (segments are contiguous runs of one id)."""
    T = segment_ids.shape[1]
    idx = jnp.arange(T, dtype=jnp.int32)[None]  # [1, T]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)  # start of each token's segment
    return idx - first


def _run_traced(cfg, params, tokens, attention_mask, positions, cache, segment_ids, want_logits,
                layout):
    out_major = _check_layout(layout) == "decode"
    if out_major and not _is_split(params):
        raise ValueError('layout="decode" runs the params of qwen.decode_layout (split layers)')
    B, T = tokens.shape
    mask = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
    if segment_ids is not None:
        if cache is not None:
            raise ValueError("segment_ids (packed rows) are for cache-free forwards only")
        segment_ids = segment_ids.astype(jnp.int32)
        mask = mask & (segment_ids != 0)  # segment 0 is padding
        if positions is None:
            positions = segment_positions(segment_ids)
    # Segment of each token: its packed sequence's id, 1 without packing, 0 for padding.
    q_segment = jnp.where(mask, 1 if segment_ids is None else segment_ids, 0).astype(jnp.int32)
    if cache is None:
        prior = jnp.zeros((B,), jnp.int32)
        attn_mask = attention.AttnMask(q_segment, q_segment, jnp.zeros((), jnp.int32),
                                       causal_only=attention_mask is None and segment_ids is None)
        kv, index = None, 0
    else:
        S = cache.mask.shape[1]
        if T > S:
            raise ValueError(f"{T} new tokens do not fit a KV cache of {S} slots")
        prior = jnp.sum(cache.mask, axis=1, dtype=jnp.int32)  # valid slots per row [B]
        if cache.index.ndim == 1:  # a write slot per row (KVCache.index [B])
            key_mask = jax.vmap(lambda m, x, i: jax.lax.dynamic_update_slice(m, x, (i,)))(
                cache.mask, mask, cache.index)  # [B, S]
        else:
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))  # [B, S]
        attn_mask = attention.AttnMask(q_segment, key_mask.astype(jnp.int32),
                                       jnp.asarray(cache.index, jnp.int32))
        kv, index = (cache.k, cache.v), cache.index
        if isinstance(cache.k, tuple) != _is_split(params):
            raise ValueError("split params need a split cache and stacked params a stacked "
                             "one (see split_layers / split_cache)")
    if positions is None:
        # Left padding: each row counts only its real tokens, so row positions are 0, 1, 2, ...
        positions = jnp.maximum(prior[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)

    hidden, new_kv = Qwen(cfg, split_layers=_is_split(params), out_major=out_major).apply(
        _to_flax(params), tokens, positions, attn_mask, kv, index)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(k=new_kv[0], v=new_kv[1], mask=key_mask, index=cache.index + T)
    if not want_logits:
        return hidden, new_cache
    with jax.named_scope("unembed"):
        logits = sharding.constrain(_logits(cfg, params, hidden, layout),
                                    ("batch", "seq", "act_vocab"))
    return logits, new_cache


def _logits(cfg, params, hidden, layout):
    """hidden [B, T, D] -> float32 logits [B, T, V] (output-major in the decode layout)."""
    if layout == "decode":
        w = params["lm_head"]["kernel_out_major"]  # [V, D]
        logits = out_major_dot(hidden, w.astype(hidden.dtype), 1,
                               preferred_element_type=jnp.float32)
        return jax.lax.optimization_barrier(logits)
    w = unembed_matrix(cfg, params).astype(hidden.dtype)  # [D, V]
    return jnp.einsum("BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)


def forward(cfg: ModelConfig, params: Params, tokens, attention_mask=None, positions=None,
            cache: KVCache | None = None, segment_ids=None, *, layout: str = "train"):
    """Logits of a batch of token sequences.

    Args:
      cfg: the architecture (static under jit).
      params: from init_params / load_hf, or split_layers(params) (the cache, if any,
        must then be split too: split_cache).
      tokens: int32 [B, T].
      attention_mask: [B, T], 1 = real token, 0 = padding (left padding); default all ones.
      positions: int32 [B, T]; default from the mask and cache (see docs/CONTRACTS.md).
      cache: a KVCache; the T new keys/values go to slots [index, index + T).
      segment_ids: int32 [B, T] for packed rows (no cache): a token attends only to
        earlier tokens of its own segment; id 0 marks padding. Positions then default to
        restarting at 0 in each segment (segment_positions).
      layout: the params' weight layout, a static choice: "train" (as stored and
        trained, stacked or split_layers) or "decode" (the params of decode_layout).
    Returns:
      float32 logits [B, T, V]; with a cache, (logits, new_cache).
    Under `sharding.use_rules(mesh, rules)` activations are sharding-constrained.
    """
    logits, new_cache = _run(cfg, params, tokens, attention_mask, positions, cache, segment_ids,
                             rules_key=_rules_key(), want_logits=True, layout=layout)
    return logits if cache is None else (logits, new_cache)


def forward_hidden(cfg: ModelConfig, params: Params, tokens, attention_mask=None, positions=None,
                   cache: KVCache | None = None, segment_ids=None, *, layout: str = "train"):
    """Final-normed hidden states [B, T, D] in cfg.dtype (and the new cache when given).

    Same arguments as `forward`; pair with `unembed_matrix` to compute logits in chunks.
    """
    hidden, new_cache = _run(cfg, params, tokens, attention_mask, positions, cache, segment_ids,
                             rules_key=_rules_key(), want_logits=False, layout=layout)
    return hidden if cache is None else (hidden, new_cache)
