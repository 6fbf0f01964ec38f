"""Causal self-attention behind one function, `attend`, in several implementations.

    dense      the reference: float32 scores [B, K, G, T, S], masked softmax (memory T x S)
    blockwise  flash-style in pure JAX (every backend): online softmax over key blocks,
               key blocks above the causal diagonal skipped, custom VJP whose backward
               recomputes the blocks (memory O(T x block))
    cudnn      jax.nn.dot_product_attention(implementation="cudnn"), GPU, bf16 / fp16
    splash     the Pallas TPU splash-attention kernel with segment ids, TPU
    auto       cudnn on GPU, splash on TPU, dense or blockwise on CPU (see `resolve`)

Which keys a query sees is described by `AttnMask`: per-token segment ids for queries and
keys (0 = padding or an empty cache slot) and the cache slot of the first query. Query t
(slot q_offset + t) attends to key slot s iff s <= q_offset + t and its segment equals the
key's. Left padding, packed rows (several sequences per row) and prefill into a KV cache
are all this one rule; no [B, T, S] mask is built except by dense (and cudnn where the
padding needs a mask, see _cudnn).

Rows of padding queries are garbage in every implementation (they differ between them);
real tokens never read them.
"""

from __future__ import annotations

import functools
import logging
import os

import flax.struct
import jax
import jax.numpy as jnp

from prorl_jax.errors import ConfigError
from prorl_jax.model.config import ATTENTION_IMPLS as IMPLS

_KEY = "model.attention_impl"
_NEG = float(jnp.finfo(jnp.float32).min)  # finite "minus infinity": no inf - inf = NaN

# auto on CPU: blockwise once T x S reaches this many score entries per (row, head), or
# whenever dense's float32 scores of one layer would take more than _DENSE_MEMORY_SHARE of
# the device memory. Measured in a whole 40M model (docs/performance.md, "Training step"):
# the train step is 15% faster blockwise at T = 256 and 5% at 128, equal at 64, because the
# layer scan saves no [B, N, T, S] float32 probabilities; forwards are equal or faster from
# 64 up. Below the crossover the two are equal and dense's single dot is the simpler program.
CPU_BLOCKWISE_MIN_SCORES = 128 * 128
_DENSE_MEMORY_SHARE = 0.125

log = logging.getLogger(__name__)
_logged: set = set()


@flax.struct.dataclass
class AttnMask:
    """Which keys each query attends to (see the module docstring).

    q_segment:   int32 [B, T]  segment of each query token, 0 = padding
    kv_segment:  int32 [B, S]  segment of each key slot, 0 = padding / not written
    q_offset:    int32 [] or [B]  cache slot of query 0 (0 without a cache); [B] when each
                               row writes at its own slot (dense only)
    causal_only: static bool   no padding, no packing, no cache: every token is segment 1
                               and S == T (cudnn then needs no mask)
    """

    q_segment: jax.Array
    kv_segment: jax.Array
    q_offset: jax.Array
    causal_only: bool = flax.struct.field(pytree_node=False, default=False)


def dense_allowed(mask: AttnMask, T: int, S: int) -> jax.Array:
    """bool [B, T, S] of the dense path.

    Real queries see earlier keys of their own segment. Padding queries (segment 0) see
    every earlier real key, as the model's original mask had them; that keeps the cache
    path's numbers exactly what they were (only padding rows depend on it).
    """
    offset = mask.q_offset.reshape(-1, 1)  # [1 or B, 1]
    q_slot = offset + jnp.arange(T)  # [1 or B, T]
    causal = jnp.arange(S)[None, None, :] <= q_slot[:, :, None]  # [1 or B, T, S]
    qs, ks = mask.q_segment[:, :, None], mask.kv_segment[:, None, :]
    return causal & (ks != 0) & ((qs == ks) | (qs == 0))


def attend(q, k, v, mask: AttnMask, *, impl: str = "auto", block_q: int = 128,
           block_kv: int = 256, interpret: bool = False):
    """Causal attention of T queries over S key slots.

    Args:
      q: [B, T, K, G, H] queries (N = K * G heads, grouped by their kv head).
      k, v: [B, K, S, H] keys and values (the KV cache's layout).
      mask: AttnMask.
      impl: one of IMPLS; "auto" picks per backend and shape (`resolve`).
      block_q, block_kv: blockwise (and splash) tile sizes; clipped to T and S.
      interpret: run splash in Pallas interpret mode (tests on CPU).
    Returns:
      [B, T, K, G, H] in q's dtype.
    Raises:
      ConfigError naming model.attention_impl for an unknown impl or one this backend,
      dtype or head size cannot run.
    """
    B, T, K, G, H = q.shape
    S = k.shape[2]
    impl = resolve(impl, backend=jax.default_backend(), dtype=q.dtype, B=B, N=K * G, T=T,
                   S=S, H=H, interpret=interpret)
    scale = H ** -0.5
    if impl == "dense":
        return _dense(q, k, v, mask, scale)
    if impl == "blockwise":
        return blockwise(q, k, v, mask, scale=scale, block_q=block_q, block_kv=block_kv)
    if impl == "cudnn":
        return _cudnn(q, k, v, mask, scale)
    return _splash(q, k, v, mask, scale, block_q, block_kv, interpret)


def resolve(impl: str, *, backend: str, dtype, B: int, N: int, T: int, S: int, H: int,
            interpret: bool = False) -> str:
    """The implementation `attend` runs: `impl` checked against the backend, or auto's pick.

    auto: cudnn on GPU for bf16 / fp16 with a head size cuDNN takes, else blockwise;
    splash on TPU for cache-free self-attention (T == S), else blockwise; on CPU dense
    below CPU_BLOCKWISE_MIN_SCORES and blockwise from there or when dense would not fit.
    The pick is logged once per shape, at DEBUG level.
    """
    if impl not in IMPLS:
        raise ConfigError(f"{_KEY} must be one of {IMPLS}, got {impl!r}")
    dtype = jnp.dtype(dtype)
    if impl == "cudnn":
        why = _cudnn_unsupported(backend, dtype, H)
        if why:
            raise ConfigError(f"{_KEY}='cudnn' cannot run here: {why}")
    elif impl == "splash":
        if backend != "tpu" and not interpret:
            raise ConfigError(f"{_KEY}='splash' needs a TPU (the Pallas TPU kernel); "
                              f"this backend is {backend}")
    if impl == "splash" and T != S:
        # Splash's causal mask is static and a cache's first slot is a traced value:
        # prefill into a KV cache runs blockwise (documented in docs/configuration.md).
        impl = "blockwise"
    if impl != "auto":
        return impl
    if backend == "gpu" and not _cudnn_unsupported(backend, dtype, H):
        choice = "cudnn"
    elif backend == "tpu" and T == S:
        choice = "splash"
    elif backend in ("gpu", "tpu"):
        choice = "blockwise"
    elif T * S >= CPU_BLOCKWISE_MIN_SCORES or B * N * T * S * 4 > _DENSE_MEMORY_SHARE * _memory():
        choice = "blockwise"
    else:
        choice = "dense"
    key = (backend, str(dtype), B, N, T, S, H, choice)
    if key not in _logged:
        _logged.add(key)
        log.debug("attention_impl auto: %s for B=%d N=%d T=%d S=%d H=%d %s on %s",
                  choice, B, N, T, S, H, dtype, backend)
    return choice


def _cudnn_unsupported(backend: str, dtype, H: int) -> str | None:
    if backend != "gpu":
        return f"it needs a CUDA GPU; this backend is {backend}"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN flash attention takes bfloat16 or float16, got {jnp.dtype(dtype)}"
    if H % 8 or H > 256:
        return f"cuDNN takes head_dim a multiple of 8 up to 256, got {H}"
    return None


def _memory() -> int:
    """Bytes of memory of the default device (host RAM on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - a backend without memory_stats
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ----------------------------------------------------------------------------- dense


def _dense(q, k, v, mask, scale):
    T, S = q.shape[1], k.shape[2]
    scores = jnp.einsum("BTKGH,BKSH->BKGTS", q, k, preferred_element_type=jnp.float32)
    allowed = dense_allowed(mask, T, S)
    # finfo.min (not -inf) keeps a fully masked row (left padding) finite: uniform, no NaN.
    scores = jnp.where(allowed[:, None, None], scores * scale, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    # Output [B, K, G, T, H] then a small transpose: asking the einsum for BTKGH directly
    # makes XLA:CPU contract over S as the lhs's major dim, a slow generic dot (3x the
    # time of this batched matmul at decode shapes).
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v)
    return out.transpose(0, 3, 1, 2, 4)


# ----------------------------------------------------------------------------- blockwise


def blockwise(q, k, v, mask: AttnMask, *, scale: float, block_q: int, block_kv: int):
    """Flash attention in pure JAX: same arguments and result as `attend` (impl blockwise).

    Queries are cut into blocks of block_q, keys into blocks of block_kv (T and S padded up
    to whole blocks; padded keys belong to no segment). For query block i a loop runs over
    key blocks 0 .. last(i), the last one holding a key at or before the block's last
    query slot: the blocks above the diagonal are never computed (about half the work at
    S == T). With padding or packing, a tile whose query and key segment-id ranges are
    disjoint in every row is skipped too (lax.cond): in a packed row, a sequence's
    queries do not pay for the earlier sequences' keys. Scores, running max and sum are
    float32. The backward pass (custom VJP) recomputes each visited tile's probabilities
    from the saved log-sum-exp, so neither pass holds more than one
    [B, K, G, block_q, block_kv] score tile.
    """
    T, S = q.shape[1], k.shape[2]
    bq, bk = min(block_q, T), min(block_kv, S)
    return _flash(q, k, v, mask.q_segment, mask.kv_segment,
                  jnp.asarray(mask.q_offset, jnp.int32), float(scale), bq, bk,
                  not mask.causal_only)


def _pad_to(x, axis, n, value):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _seg_blocks(seg, n, b, pad_value):
    """[B, L] segment ids -> [n, B, b] per block."""
    B = seg.shape[0]
    return _pad_to(seg, 1, n * b, pad_value).reshape(B, n, b).transpose(1, 0, 2)


def _blocks(q, k, v, bq, bk):
    """q [nq, B, K, G, bq, H] and k / v [nk, B, K, bk, H]: the inputs cut into blocks."""
    B, T, K, G, H = q.shape
    S = k.shape[2]
    nq, nk = -(-T // bq), -(-S // bk)
    qb = _pad_to(q, 1, nq * bq, 0).reshape(B, nq, bq, K, G, H).transpose(1, 0, 3, 4, 2, 5)
    kb = _pad_to(k, 2, nk * bk, 0).reshape(B, K, nk, bk, H).transpose(2, 0, 1, 3, 4)
    vb = _pad_to(v, 2, nk * bk, 0).reshape(B, K, nk, bk, H).transpose(2, 0, 1, 3, 4)
    return qb, kb, vb


class _Tiles:
    """Block geometry and masks shared by the forward and both backward passes."""

    def __init__(self, q_seg, kv_seg, q_offset, bq, bk, skip_segments):
        self.bq, self.bk, self.q_offset = bq, bk, q_offset
        self.nq, self.nk = -(-q_seg.shape[1] // bq), -(-kv_seg.shape[1] // bk)
        # Padded queries and keys get segments -1 / -2: they match nothing real or padded.
        self.qs = _seg_blocks(q_seg, self.nq, bq, -1)  # [nq, B, bq]
        self.ks = _seg_blocks(kv_seg, self.nk, bk, -2)  # [nk, B, bk]
        self.skip_segments = skip_segments
        if skip_segments:
            self.q_range = self.qs.min(-1), self.qs.max(-1)  # [nq, B] each
            self.k_range = self.ks.min(-1), self.ks.max(-1)  # [nk, B] each

    def allowed(self, i, j):
        """bool [B, 1, 1, bq, bk]: the causal + segment rule on query block i x key block j."""
        q_slot = self.q_offset + i * self.bq + jnp.arange(self.bq)
        k_slot = j * self.bk + jnp.arange(self.bk)
        qs, ks = self.qs[i], self.ks[j]
        ok = (k_slot[None, :] <= q_slot[:, None])[None] & (qs[:, :, None] == ks[:, None, :])
        return ok[:, None, None]

    def last_kv_block(self, i):
        return _last_kv_block(self.q_offset, i, self.bq, self.bk, self.nk)

    def first_q_block(self, j):
        return _first_q_block(self.q_offset, j, self.bq, self.bk, self.nq)

    def visit(self, i, j, body, carry):
        """body(carry) on tile (i, j), or carry unchanged when no row's query segment-id
        range [min, max] meets its key range (then no pair of the tile can match)."""
        if not self.skip_segments:
            return body(carry)
        (q_lo, q_hi), (k_lo, k_hi) = self.q_range, self.k_range
        meet = jnp.any((q_lo[i] <= k_hi[j]) & (k_lo[j] <= q_hi[i]))
        return jax.lax.cond(meet, body, lambda c: c, carry)


def _last_kv_block(q_offset, i, bq, bk, nk):
    """Number of key blocks query block i needs: those with a key slot <= its last query."""
    return jnp.clip((q_offset + (i + 1) * bq - 1) // bk + 1, 0, nk)


def _first_q_block(q_offset, j, bq, bk, nq):
    """First query block whose last query slot reaches key block j's first slot."""
    return jnp.clip((j * bk - q_offset) // bq, 0, nq)


def _scores(qi, kj, scale):
    return jnp.einsum("BKGtH,BKsH->BKGts", qi, kj, preferred_element_type=jnp.float32) * scale


def _forward_blocks(qb, kb, vb, tiles: _Tiles, scale):
    """out [nq, B, K, G, bq, H] (q dtype) and lse float32 [nq, B, K, G, bq]."""
    dt = qb.dtype

    def q_block(_, xs):
        qi, i = xs
        B, K, G, bq = qi.shape[:4]

        def kv_block(j, carry):
            def tile(carry):
                m, l, acc = carry
                ok = tiles.allowed(i, j)
                s = jnp.where(ok, _scores(qi, kb[j], scale), _NEG)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum("BKGts,BKsH->BKGtH", p.astype(dt), vb[j],
                                preferred_element_type=jnp.float32)
                return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv
            return tiles.visit(i, j, tile, carry)

        init = (jnp.full((B, K, G, bq), _NEG, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
                jnp.zeros(qi.shape, jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, tiles.last_kv_block(i), kv_block, init)
        empty = l == 0  # a query that sees no key (padding): output 0
        out = (acc / jnp.where(empty, 1.0, l)[..., None]).astype(dt)
        lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
        return None, (out, lse)

    _, (ob, lse) = jax.lax.scan(q_block, None, (qb, jnp.arange(tiles.nq)))
    return ob, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _flash(q, k, v, q_seg, kv_seg, q_offset, scale, bq, bk, skip_segments):
    out, _ = _flash_fwd(q, k, v, q_seg, kv_seg, q_offset, scale, bq, bk, skip_segments)
    return out


def _flash_fwd(q, k, v, q_seg, kv_seg, q_offset, scale, bq, bk, skip_segments):
    qb, kb, vb = _blocks(q, k, v, bq, bk)
    tiles = _Tiles(q_seg, kv_seg, q_offset, bq, bk, skip_segments)
    ob, lse = _forward_blocks(qb, kb, vb, tiles, scale)
    return _unblock_q(ob, q.shape[1]), (qb, kb, vb, q_seg, kv_seg, q_offset, ob, lse)


def _unblock_q(xb, T):
    """[nq, B, K, G, bq, ...] -> [B, T, K, G, ...]."""
    nq, B, K, G, bq = xb.shape[:5]
    x = jnp.moveaxis(xb, 4, 1).reshape(nq * bq, B, K, G, *xb.shape[5:])
    return jnp.moveaxis(x, 0, 1)[:, :T]


def _flash_bwd(scale, bq, bk, skip_segments, res, g):
    """Flash-attention-2 backward: one loop over key blocks and, inside it, over the query
    blocks that reach them, recomputing p = exp(s - lse) of each visited tile once."""
    qb, kb, vb, q_seg, kv_seg, q_offset, ob, lse = res
    tiles = _Tiles(q_seg, kv_seg, q_offset, bq, bk, skip_segments)
    dt = qb.dtype
    B, T, K, G, H = g.shape
    S = kv_seg.shape[1]
    gb = _pad_to(g, 1, tiles.nq * bq, 0).reshape(B, tiles.nq, bq, K, G, H)
    gb = gb.transpose(1, 0, 3, 4, 2, 5)  # [nq, B, K, G, bq, H]
    # delta_t = sum_s p_ts dp_ts = do_t . o_t  [nq, B, K, G, bq]
    delta = jnp.sum(gb.astype(jnp.float32) * ob.astype(jnp.float32), axis=-1)

    def tile_grads(i, j):
        """p and ds = p * (dp - delta) of tile (i, j), float32 [B, K, G, bq, bk]."""
        qi, gi = qb[i], gb[i]
        p = jnp.where(tiles.allowed(i, j),
                      jnp.exp(_scores(qi, kb[j], scale) - lse[i][..., None]), 0.0)
        dp = jnp.einsum("BKGtH,BKsH->BKGts", gi, vb[j], preferred_element_type=jnp.float32)
        return p, p * (dp - delta[i][..., None])

    def dkv_block(dq, j):
        def q_block(i, carry):
            def tile(carry):
                dq, dk, dv = carry
                p, ds = tile_grads(i, j)
                ds = ds.astype(dt)
                dv = dv + jnp.einsum("BKGts,BKGtH->BKsH", p.astype(dt), gb[i],
                                     preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("BKGts,BKGtH->BKsH", ds, qb[i],
                                     preferred_element_type=jnp.float32)
                dq_i = dq[i] + jnp.einsum("BKGts,BKsH->BKGtH", ds, kb[j],
                                          preferred_element_type=jnp.float32)
                return jax.lax.dynamic_update_index_in_dim(dq, dq_i, i, 0), dk, dv
            return tiles.visit(i, j, tile, carry)

        zeros = jnp.zeros(kb.shape[1:], jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(tiles.first_q_block(j), tiles.nq, q_block,
                                       (dq, zeros, zeros))
        return dq, ((dk * scale).astype(dt), dv.astype(dt))

    # One pass over key blocks (FlashAttention-2's backward): each visited tile's p and ds
    # feed dk, dv of its key block and dq of its query block, accumulated float32 [nq, ...].
    dqb, (dkb, dvb) = jax.lax.scan(dkv_block, jnp.zeros(qb.shape, jnp.float32),
                                   jnp.arange(tiles.nk))
    dqb = (dqb * scale).astype(dt)
    nk = tiles.nk
    # [nk, B, K, bk, H] -> [B, K, S, H]
    dk = dkb.transpose(1, 2, 0, 3, 4).reshape(B, K, nk * bk, H)[:, :, :S]
    dv = dvb.transpose(1, 2, 0, 3, 4).reshape(B, K, nk * bk, H)[:, :, :S]
    return _unblock_q(dqb, T), dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- cudnn


def _cudnn(q, k, v, mask, scale, implementation="cudnn"):
    """jax.nn.dot_product_attention with the mask in the form it takes.

    Cache-free rows without padding or packing are plain causal (is_causal, no mask
    array: cuDNN skips the upper triangle itself). Anything else (left padding, segment
    ids, a cache offset) is passed as a boolean mask [B, 1, T, S]; cuDNN turns it into
    an additive bias, O(T x S) memory per row though not per head. (`implementation` is
    a parameter so tests can run the same argument building through XLA on CPU.)
    """
    B, T, K, G, H = q.shape
    S = k.shape[2]
    qn = q.reshape(B, T, K * G, H)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, S, K, H]
    if mask.causal_only:
        out = jax.nn.dot_product_attention(qn, kt, vt, scale=scale, is_causal=True,
                                           implementation=implementation)
    else:
        q_slot = mask.q_offset + jnp.arange(T)
        causal = jnp.arange(S)[None, :] <= q_slot[:, None]
        ok = causal[None] & (mask.q_segment[:, :, None] == mask.kv_segment[:, None, :])
        out = jax.nn.dot_product_attention(qn, kt, vt, mask=ok[:, None], scale=scale,
                                           implementation=implementation)
    return out.reshape(B, T, K, G, H)


# ----------------------------------------------------------------------------- splash


def _splash(q, k, v, mask, scale, block_q, block_kv, interpret):
    """Pallas splash attention (multi-query kernel per kv head: GQA without repeating k/v).

    T is padded to a multiple of the tile size; padded tokens get their own segment so
    that no row is empty (splash requires every row to see a key).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    B, T, K, G, H = q.shape
    tile = min(block_q, block_kv, 128 * -(-T // 128))
    Tp = tile * -(-T // tile)
    seg = _pad_to(mask.q_segment, 1, Tp, -1)  # == kv_segment without a cache (T == S)
    qt = _pad_to(q * jnp.asarray(scale, q.dtype), 1, Tp, 0).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kt, vt = _pad_to(k, 2, Tp, 0), _pad_to(v, 2, Tp, 0)  # [B, K, S, H]
    heads = sm.MultiHeadMask([sm.CausalMask((Tp, Tp)) for _ in range(G)])
    sizes = sk.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile,
                          block_q_dkv=tile, block_kv_dkv=tile, block_kv_dkv_compute=tile,
                          block_q_dq=tile, block_kv_dq=tile)
    kernel = sk.make_splash_mqa_single_device(mask=heads, block_sizes=sizes, interpret=interpret)

    def one(qh, kh, vh, s):  # [G, T, H], [S, H], [S, H], [T]
        return kernel(qh, kh, vh, segment_ids=sk.SegmentIds(q=s, kv=s))

    per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over K
    out = jax.vmap(per_kv_head, in_axes=(0, 0, 0, 0))(qt, kt, vt, seg)  # [B, K, G, Tp, H]
    return out.transpose(0, 3, 1, 2, 4)[:, :T].astype(q.dtype)


def check_backend(impl: str, dtype, head_dim: int = 128) -> None:
    """Fail early (before any work) when `impl` cannot run on this process's backend
    (head_dim is checked again, with the model's own, when the forward is traced)."""
    resolve(impl, backend=jax.default_backend(), dtype=dtype, B=1, N=1, T=1, S=1,
            H=head_dim)


def score_bytes(impl: str, B: int, N: int, T: int, S: int, block_q: int = 128,
                block_kv: int = 256) -> int:
    """Bytes of one float32 score tensor the implementation materialises (planning)."""
    if impl == "dense":
        return 4 * B * N * T * S
    return 4 * B * N * min(block_q, T) * min(block_kv, S)


__all__ = ["IMPLS", "AttnMask", "attend", "blockwise", "check_backend", "dense_allowed",
           "resolve", "score_bytes"]
