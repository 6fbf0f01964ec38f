"""The continuous-batching rollout engine: fixed decode slots refilled as rows finish.

A row is one (prompt, sample) pair, R = P * n rows, prompt-major as in the static engine
(sampler.py, which stays the reference). The engine owns B decode slots; each slot holds
one row's KV cache of S = T + M token slots (T the prompt bucket, M = max_new_tokens),
laid out exactly as the static engine lays out a row (left-padded prompt in [0, T),
generated token t's keys at slot T + t), so both compute every row with the same numbers.

Host loop (generate_stream):
  1. fill free slots with pending rows, in row order. Each distinct prompt is prefilled
     once (`_prefill`, a group of U >= 2 prompts) and its cache written into the slots
     of its samples (`_insert`, which also draws the row's token 0 from the prefill
     logits). Samples that find no free slot are inserted at a later sync from the kept
     prefill group, which is dropped once all its rows are placed.
  2. dispatch a decode block (`_decode_block`): up to `steps_per_sync` steps in one
     jitted while_loop, ending early when every slot is done, or, while rows are pending,
     once slots / REFILL_FRACTION rows have finished (so finished slots do not idle to
     the block's end). A row stops at a stop token or when it has M tokens; its slot is
     free at the next sync. Attention reads
     only the first T + width slots, width the longest live row plus the block's steps,
     rounded up to a power of two (so a handful of programs), not all S.
  3. read the block's small outputs (steps, done flags, the block's tokens), decide the
     next inserts and dispatch them with the next block BEFORE assembling the finished
     rows, so the device decodes while the host hands rows to the caller (who may be
     decoding text and scoring rewards on them).
  4. the tail: once every row is placed, the live slots are gathered into a smaller
     state (`_compact`) each time they fit the next of `tail_sizes` (sizes 3/4 apart),
     and each tail block ends as soon as they do, so the last long rows do not step a
     batch of idle slots.

Randomness: row r's token at its own step t draws from fold_in(fold_in(key(seed), r), t),
exactly as in the static engine, so the output for a seed does not depend on the slot
count, the refill order, the mesh or the engine.

Programs: one prefill and one insert program per group-size bucket (powers of two up to
bucket(B / n)), one decode-block program per (width bucket, slot count in
tail_sizes(B)), one compaction program per pair of tail sizes (from, to), per (B, T, M, steps_per_sync,
strategy fields, stop-id count bucket, mesh, layout). A trainer calling every step with the
same settings reuses them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prorl_jax import distributed
from prorl_jax import sharding as shd
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.rl.logprobs import token_logprobs  # the trainer's function: one graph
from prorl_jax.sampling import sampler
from prorl_jax.sampling.sampler import (  # noqa: F401 (the layout helpers re-exported)
    MIN_PROMPT_BUCKET,
    PAD_TOKEN,
    GenerationOutput,
    PromptError,
    _layout_params,
    bucket,
    check_layout,
    decode_params,
    default_layout,
)
from prorl_jax.sampling.settings import (
    DEFAULT_STEPS_PER_SYNC,
    EngineError,
    check_engine_settings,
)
from prorl_jax.sampling.strategies import SamplingParams, Strategy, strategy_for

MIN_WIDTH_BUCKET = 16  # smallest generated-slot window a decode block attends over
# While rows are pending, a block ends once slots // REFILL_FRACTION of its rows have
# finished (or after steps_per_sync steps). A finished slot idles until its block ends,
# on average half the time the block takes to retire that many rows, so about
# 1 / (2 * REFILL_FRACTION) of the slot-steps; blocks still run ~8 steps at RL lengths
# (64 slots, mean length ~130), so host syncs stay a small cost.
REFILL_FRACTION = 16


@dataclasses.dataclass(frozen=True)
class FinishedRow:
    """One finished row of `generate_stream`.

    index:    global row (prompt-major: prompt index // n, sample index % n).
    tokens:   int32 [length] generated tokens, the stop token included when finished.
    logprobs: float32 [length], as GenerationOutput.logprobs.
    length:   generated tokens.
    finished: True when a stop token ended the row, False when the budget did.
    """

    index: int
    tokens: np.ndarray
    logprobs: np.ndarray
    length: int
    finished: bool


@struct.dataclass
class _Slots:
    """Device state of the B decode slots (a free slot is done and holds no row)."""

    cache: qwen.KVCache  # mask [B, S]; index int32 [B] next write slot; k, v split or stacked
    row: jax.Array  # int32 [B] global row of the slot (its random stream)
    step: jax.Array  # int32 [B] index of the row's next token
    last: jax.Array  # int32 [B] token written at step - 1
    done: jax.Array  # bool [B]
    finished: jax.Array  # bool [B] a stop token ended the row


def _rules(mesh):
    return contextlib.nullcontext() if mesh is None else shd.use_rules(mesh, shd.SAMPLE_RULES)


def _kv_axes(split: bool) -> tuple:
    axes = qwen.cache_axes().k
    return axes[1:] if split else axes


def _constrain(state: _Slots, split: bool) -> _Slots:
    axes = _kv_axes(split)
    kv = (lambda t: tuple(shd.constrain(x, axes) for x in t)) if split else (
        lambda x: shd.constrain(x, axes))
    cache = state.cache
    cache = qwen.KVCache(k=kv(cache.k), v=kv(cache.v),
                         mask=shd.constrain(cache.mask, ("batch", "cache_seq")),
                         index=shd.constrain(cache.index, ("batch",)))
    vec = functools.partial(shd.constrain, axes=("batch",))
    return _Slots(cache=cache, row=vec(state.row), step=vec(state.step), last=vec(state.last),
                  done=vec(state.done), finished=vec(state.finished))


def _map_kv(fn, cache: qwen.KVCache, split: bool) -> qwen.KVCache:
    """Apply fn(k_layer, v_layer) -> (k, v) to every layer; stacked caches in one call."""
    if split:
        pairs = [fn(k, v) for k, v in zip(cache.k, cache.v)]
        return cache.replace(k=tuple(p[0] for p in pairs), v=tuple(p[1] for p in pairs))
    k, v = fn(cache.k, cache.v)
    return cache.replace(k=k, v=v)


@functools.partial(jax.jit, static_argnames=("cfg", "slots", "length", "split", "mesh"))
def _empty_slots(cfg: ModelConfig, *, slots: int, length: int, split: bool, mesh=None) -> _Slots:
    with _rules(mesh):
        cache = qwen.init_cache(cfg, slots, length)
        if split:
            cache = qwen.split_cache(cache)
        zeros = jnp.zeros((slots,), jnp.int32)
        state = _Slots(cache=cache.replace(index=zeros), row=zeros, step=zeros, last=zeros,
                       done=jnp.ones((slots,), bool), finished=jnp.zeros((slots,), bool))
        return _constrain(state, split)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"))
def _prefill(cfg: ModelConfig, params, prompt, prompt_mask, mesh=None):
    """U distinct prompts [U, T] -> their stacked cache k, v [L, U, K, T, H], mask [U, T]
    and the logits of their last position [U, V] (what the static engine computes)."""
    with _rules(mesh):
        cache = qwen.init_cache(cfg, prompt.shape[0], prompt.shape[1])
        hidden, cache = qwen.forward_hidden(cfg, params, prompt, attention_mask=prompt_mask,
                                            cache=cache)
        return cache.k, cache.v, cache.mask, sampler._unembed(cfg, params, hidden[:, -1])


def _pick(strategy: Strategy, logits, row_keys, step, live, stop_ids):
    """The static engine's draw for rows at their own steps: logits [B, V], row_keys [B],
    step int32 [B] -> token, logprob (PAD / 0 where not live) and hit_stop, each [B]."""
    keys = jax.vmap(jax.random.fold_in)(row_keys, step)
    tok = strategy(logits, keys)
    lp = token_logprobs(logits, tok, strategy.logprob_temperature)
    tok = jnp.where(live, tok, PAD_TOKEN)
    lp = jnp.where(live, lp, 0.0)
    stop = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1) & live
    return tok, lp, stop


def _row_keys(seed, rows):
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows)


@functools.partial(jax.jit, static_argnames=("max_new", "split", "mesh"),
                   donate_argnames=("state",))
def _insert(state: _Slots, k, v, mask, logits, slot, src, rows, seed, strategy: Strategy,
            stop_ids, *, max_new: int, split: bool, mesh=None):
    """Start rows in slots from a prefill group and draw their token 0.

    Args:
      state: the slots (donated: updated in place).
      k, v: the group's stacked prompt cache [L, U, K, T, H]; mask bool [U, T];
        logits float32 [U, V].
      slot: int32 [B] target slot of each insertion; B (out of range) marks unused
        entries, which are dropped.
      src: int32 [B] group row (prompt) of each insertion; rows: int32 [B] its global row.
    Returns:
      (state, token0 int32 [B], logprob0 float32 [B]) per insertion entry.
    """
    with _rules(mesh):
        width = mask.shape[1]  # T
        cache = state.cache

        if split:  # layer arrays [B, K, S, H]; the group's k, v [L, U, K, T, H]
            new_k = tuple(c.at[slot, :, :width].set(k[i, src].astype(c.dtype), mode="drop")
                          for i, c in enumerate(cache.k))
            new_v = tuple(c.at[slot, :, :width].set(v[i, src].astype(c.dtype), mode="drop")
                          for i, c in enumerate(cache.v))
        else:  # [L, B, K, S, H]
            new_k = cache.k.at[:, slot, :, :width].set(k[:, src].astype(cache.k.dtype),
                                                        mode="drop")
            new_v = cache.v.at[:, slot, :, :width].set(v[:, src].astype(cache.v.dtype),
                                                        mode="drop")
        cache = cache.replace(k=new_k, v=new_v)
        total = cache.mask.shape[1]  # S
        row_mask = jnp.pad(mask[src], ((0, 0), (0, total - width)))  # [B, S]
        cache = cache.replace(mask=cache.mask.at[slot].set(row_mask, mode="drop"),
                              index=cache.index.at[slot].set(width, mode="drop"))
        live = jnp.ones(slot.shape, bool)
        tok, lp, stop = _pick(strategy, logits[src], _row_keys(seed, rows),
                              jnp.zeros_like(rows), live, stop_ids)

        def set_(x, val):
            return x.at[slot].set(val, mode="drop")

        done = stop | (max_new <= 1)
        state = _Slots(cache=cache, row=set_(state.row, rows),
                       step=set_(state.step, jnp.ones_like(rows)), last=set_(state.last, tok),
                       done=set_(state.done, done), finished=set_(state.finished, stop))
        return _constrain(state, split), tok, lp


@functools.partial(jax.jit, static_argnames=("split", "mesh"))
def _compact(state: _Slots, keep, *, split: bool, mesh=None) -> _Slots:
    """The slots `keep` (int32 [B']) of the state, in that order: a smaller batch."""
    with _rules(mesh):
        def take(x, axis=0):
            return jnp.take(x, keep, axis=axis)
        cache = state.cache
        if split:
            k, v = tuple(take(x) for x in cache.k), tuple(take(x) for x in cache.v)
        else:
            k, v = take(cache.k, 1), take(cache.v, 1)
        cache = qwen.KVCache(k=k, v=v, mask=take(cache.mask), index=take(cache.index))
        return _constrain(_Slots(cache=cache, row=take(state.row), step=take(state.step),
                                 last=take(state.last), done=take(state.done),
                                 finished=take(state.finished)), split)


@functools.partial(jax.jit, static_argnames=("cfg", "width", "steps", "max_new", "split",
                                             "mesh"), donate_argnames=("state",))
def _decode_block(cfg: ModelConfig, params, state: _Slots, seed, strategy: Strategy, stop_ids,
                  retire, keep, *, width: int, steps: int, max_new: int, split: bool,
                  mesh=None):
    """Up to `steps` decode steps of every live slot, attending over slots [0, width).

    The block also ends (after at least one step) once `retire` (int32 []) rows have
    finished in it, or once at most `keep` (int32 []) slots are still decoding: the host
    then refills the finished rows' slots, or compacts the tail, without the finished
    slots idling to the end of the block. Both are runtime values (no recompile).

    Returns:
      (state, info): info = (step int32 [B], done bool [B], finished bool [B],
      tokens int32 [B, steps], logprobs float32 [B, steps]); row b's tokens of this
      block are tokens[b, :step_after - step_before] (a live row produces one per step
      until it is done).
    """
    with _rules(mesh):
        full = state.cache
        total = full.mask.shape[1]
        if width < total:  # the window every live row fits in this block
            cache = _map_kv(lambda k, v: (k[..., :width, :], v[..., :width, :]), full, split)
            cache = cache.replace(mask=full.mask[:, :width])
        else:
            cache = full
        row_keys = _row_keys(seed, state.row)
        batch = state.row.shape[0]
        was_done = state.done

        def cond(carry):
            j, st, _, _ = carry
            retired = jnp.sum(st.done & ~was_done)
            decoding = jnp.sum(~st.done)
            early = (j > 0) & ((retired >= retire) | (decoding <= keep))
            return (j < steps) & ~jnp.all(st.done) & ~early

        def body(carry):
            j, st, toks, lps = carry
            with jax.named_scope("decode_step"):
                logits, new_cache = qwen.forward(cfg, params, st.last[:, None], cache=st.cache,
                                                 layout="decode" if split else "train")
            live = ~st.done
            tok, lp, stop = _pick(strategy, logits[:, 0], row_keys, st.step, live, stop_ids)
            step = st.step + live.astype(jnp.int32)
            # Done rows keep their write slot, so their (ignored) writes stay in the window.
            new_cache = new_cache.replace(index=jnp.where(live, new_cache.index, st.cache.index))
            st = _Slots(cache=new_cache, row=st.row, step=step, last=jnp.where(live, tok, st.last),
                        done=st.done | stop | (step >= max_new), finished=st.finished | stop)
            toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, j))
            lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, j))
            return j + 1, _constrain(st, split), toks, lps

        start = (jnp.zeros((), jnp.int32), state.replace(cache=cache),
                 jnp.full((batch, steps), PAD_TOKEN, jnp.int32),
                 jnp.zeros((batch, steps), jnp.float32))
        _, st, toks, lps = jax.lax.while_loop(cond, body, start)
        if width < total:  # write the window back into the full slots
            def back(f, w):
                return jax.lax.dynamic_update_slice_in_dim(f, w, 0, axis=-2)
            if split:
                new_k = tuple(back(f, w) for f, w in zip(full.k, st.cache.k))
                new_v = tuple(back(f, w) for f, w in zip(full.v, st.cache.v))
            else:
                new_k, new_v = back(full.k, st.cache.k), back(full.v, st.cache.v)
            mask = jax.lax.dynamic_update_slice_in_dim(full.mask, st.cache.mask, 0, axis=1)
            st = st.replace(cache=full.replace(k=new_k, v=new_v, mask=mask,
                                               index=st.cache.index))
        st = _constrain(st, split)
        return st, (st.step, st.done, st.finished, toks, lps)


def tail_sizes(slots: int, shards: int = 1) -> list[int]:
    """The slot counts the tail is compacted to: `slots`, then powers of two and 1.5 x
    powers of two below it (64, 48, 32, 24, ...), rounded up to the batch shards. With
    memoryless lengths the live count decays exponentially, so sizes r apart keep the
    tail's slots busy (1 - r) / ln(1 / r) of the time: ~87% at r = 3/4, ~72% with powers
    of two alone, for about twice as many programs."""
    out, p = {slots}, 1
    while p < slots:
        out.update(-(-x // shards) * shards for x in (p, 3 * p // 2) if x < slots)
        p *= 2
    return sorted(out)


def num_slots(num_rows: int, slot_len: int, max_batch_tokens: int | None,
              decode_slots: int | None, shards: int = 1) -> int:
    """Decode slots: `decode_slots` (capped at the rows, rounded to the batch shards) or
    by default as many as the static engine's chunk rows (same KV budget)."""
    if decode_slots is None:
        return sampler.chunk_rows(num_rows, slot_len, max_batch_tokens, shards)
    if decode_slots % shards:
        raise EngineError(f"sampling.decode_slots={decode_slots} must be a multiple of the "
                          f"mesh's data x fsdp size ({shards})")
    if max_batch_tokens and decode_slots * slot_len > max_batch_tokens:
        raise EngineError(
            f"sampling.decode_slots={decode_slots} needs {decode_slots * slot_len} KV slots "
            f"({slot_len} per slot = prompt bucket + max_new_tokens), more than "
            f"sampling.max_batch_tokens={max_batch_tokens}")
    return min(decode_slots, bucket(num_rows, multiple=shards))


def generate_stream(cfg: ModelConfig, params, prompts, sampling: SamplingParams, seed: int = 0,
                    mesh=None, *, max_batch_tokens: int | None = None,
                    decode_slots: int | None = None,
                    steps_per_sync: int = DEFAULT_STEPS_PER_SYNC,
                    decode_params=None, layout: str | None = None,
                    stats: dict | None = None) -> Iterator[FinishedRow]:
    """Yield every row of `generate` once, as soon as it finishes (in finishing order).

    Args:
      cfg, params, prompts, sampling, seed, mesh, max_batch_tokens: as `generate`.
      decode_slots: rows decoded at once (default: what max_batch_tokens allows, at most
        the rows); each slot holds prompt bucket + max_new_tokens KV slots.
      steps_per_sync: decode steps per jitted block between host syncs.
      decode_params: `decode_params(cfg, params, layout, mesh)` made once by the caller
        (e.g. once per policy version); built here when None.
      layout: "decode" or "train" (default_layout when None); must match decode_params.
      stats: if given, filled with "slot_steps" (slots x decode steps run),
        "decode_tokens" (tokens those steps produced; decode_tokens / slot_steps is the
        slot utilisation), "tokens" (all generated tokens, token 0 from the prefill
        included) and "blocks" (decode blocks dispatched).
    Yields:
      FinishedRow per row.
    Raises:
      PromptError, EngineError, UserError as `generate` does, before any device work.
    """
    check_engine_settings("continuous", decode_slots, steps_per_sync)
    layout = check_layout(layout or default_layout(mesh))
    n, new = sampling.n, sampling.max_new_tokens
    rows_prompts, longest = sampler.checked_prompts(cfg, prompts, new)
    num_prompts = len(rows_prompts)
    num_rows = num_prompts * n
    width = bucket(longest, MIN_PROMPT_BUCKET)  # T, the static engine's prompt bucket
    slot_len = width + new
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    slots = num_slots(num_rows, slot_len, max_batch_tokens, decode_slots, shards)
    return _stream(cfg, params, rows_prompts, sampling, seed, mesh, slots, steps_per_sync,
                   width, decode_params, layout, stats)


def _stream(cfg, params, rows_prompts, sampling, seed, mesh, slots, steps_per_sync, width,
            layout_params, layout, stats):
    n, new = sampling.n, sampling.max_new_tokens
    num_prompts, num_rows = len(rows_prompts), len(rows_prompts) * n
    split = layout == "decode"
    tokens, mask = sampler.left_padded(rows_prompts, width)  # [P, T]
    strategy = strategy_for(sampling, cfg.vocab_size)
    stop_ids = sampler.stop_id_array(sampling.stop_token_ids)
    seed_arr = np.asarray(seed, np.uint32)
    params = sampler.sample_placed(cfg, params, mesh)
    if layout_params is None:
        layout_params = decode_params(cfg, params, layout, mesh)
    place = functools.partial(sampler._place, mesh)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    max_group = bucket(-(-slots // n), 2)
    sizes = tail_sizes(slots, shards)

    state = _empty_slots(cfg, slots=slots, length=width + new, split=split, mesh=mesh)
    slot_row = np.full(slots, -1, np.int64)  # host view: the row in each slot, -1 free
    slot_step = np.zeros(slots, np.int64)  # host view: the row's next token index
    out_tok: dict[int, list] = {}  # row -> token arrays gathered so far
    out_lp: dict[int, list] = {}
    groups: dict[int, list] = {}  # prefill group id -> [k, v, mask, logits, rows left]
    prompt_group: dict[int, tuple[int, int]] = {}  # prompt -> (group id, row in group)
    next_row = 0
    counters = {"slot_steps": 0, "decode_tokens": 0, "tokens": 0, "blocks": 0}

    def prefill_group(first: int, need: int) -> None:
        size = min(bucket(need, 2), max_group)
        ids = np.minimum(np.arange(first, first + size), num_prompts - 1)
        k, v, m, lg = _prefill(cfg, params, place(tokens[ids], ("batch", "seq")),
                               place(mask[ids], ("batch", "seq")), mesh=mesh)
        gid = first
        real = [int(p) for p in range(first, min(first + size, num_prompts))]
        groups[gid] = [k, v, m, lg, len(real) * n]
        for j, p in enumerate(real):
            prompt_group[p] = (gid, j)

    def fill(free: list[int]) -> list:
        """Insert pending rows into the free slots; returns the inserts' pending outputs."""
        nonlocal state, next_row  # fill runs only before the tail compaction changes slots
        pending_out = []
        while free and next_row < num_rows:
            p = next_row // n
            if p not in prompt_group:
                prefill_group(p, -(-len(free) // n))
            gid = prompt_group[p][0]
            slot_arr = np.full(slots, slots, np.int32)
            src = np.zeros(slots, np.int32)
            rows = np.zeros(slots, np.int32)
            placed = []
            while free and next_row < num_rows and prompt_group.get(next_row // n, (-1,))[0] == gid:
                b = free.pop(0)
                i = len(placed)
                slot_arr[i], src[i], rows[i] = b, prompt_group[next_row // n][1], next_row
                placed.append((b, next_row))
                next_row += 1
            k, v, m, lg, left = groups[gid]
            state, tok0, lp0 = _insert(
                state, k, v, m, lg, place(slot_arr, ("batch",)), place(src, ("batch",)),
                place(rows, ("batch",)), seed_arr, strategy, stop_ids, max_new=new,
                split=split, mesh=mesh)
            groups[gid][4] = left - len(placed)
            if groups[gid][4] == 0:
                del groups[gid]  # every row of the group is placed: free its prefill
            for b, r in placed:
                slot_row[b], slot_step[b] = r, 1
                out_tok[r], out_lp[r] = [], []
            pending_out.append((placed, tok0, lp0))
        return pending_out

    def assemble(block):
        """Append a finished block's tokens to their rows; yield the rows it retired."""
        if block is None:
            return
        toks, lps, block_rows, made, retired, finished = block
        for b in np.flatnonzero(made):
            out_tok[int(block_rows[b])].append(toks[b, :made[b]])
            out_lp[int(block_rows[b])].append(lps[b, :made[b]])
        for b in retired:
            r = int(block_rows[b])
            t = np.concatenate(out_tok.pop(r)).astype(np.int32)
            lp = np.concatenate(out_lp.pop(r)).astype(np.float32)
            counters["tokens"] += len(t)
            if stats is not None:
                stats.update(counters)
            yield FinishedRow(index=r, tokens=t, logprobs=lp, length=len(t),
                              finished=bool(finished[b]))

    previous = None  # the last block's outputs, assembled while the next one runs
    pending_inserts = fill(list(range(slots)))
    while True:
        live = slot_row >= 0
        if not live.any():
            break
        if next_row < num_rows:  # end the block once a few slots can be refilled
            retire, keep = max(1, slots // REFILL_FRACTION), 0
        else:
            # The tail: nothing left to insert. Gather the live slots into the smallest
            # tail size that holds them, so the last long rows do not step idle slots,
            # and end the next block once they fit the next size down.
            fewer = min(s for s in sizes if s >= int(live.sum()))
            if fewer < slots:
                order = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:fewer]
                state = _compact(state, place(order.astype(np.int32), ("batch",)),
                                 split=split, mesh=mesh)
                slot_row, slot_step, slots = slot_row[order], slot_step[order], fewer
                live = slot_row >= 0
            retire, keep = slots + 1, max((s for s in sizes if s < slots), default=0)
        reach = int(slot_step[live].max()) + steps_per_sync - 1  # generated slots written
        window = width + min(new, bucket(reach, MIN_WIDTH_BUCKET))
        state, info = _decode_block(cfg, layout_params, state, seed_arr, strategy, stop_ids,
                                    np.int32(retire), np.int32(keep), width=window,
                                    steps=steps_per_sync, max_new=new, split=split, mesh=mesh)
        counters["blocks"] += 1
        # While the block runs: hand out the previous block's finished rows, and collect
        # token 0 of the rows inserted before this block (ready: the block depends on it).
        yield from assemble(previous)
        firsts = distributed.fetch([(tok0, lp0) for _, tok0, lp0 in pending_inserts])
        for (placed, _, _), (tok0, lp0) in zip(pending_inserts, firsts):
            for i, (_, r) in enumerate(placed):
                out_tok[r].append(tok0[i:i + 1])
                out_lp[r].append(lp0[i:i + 1])
        # Waits for the block. fetch: all-gathered under several processes, each of which
        # then takes the same scheduling decisions.
        step, done, finished, block_toks, block_lps = distributed.fetch(info)
        made = np.where(live, step - slot_step, 0)  # tokens each slot made in the block
        block_rows = np.where(live, slot_row, -1)
        counters["slot_steps"] += slots * int(made.max(initial=0))
        counters["decode_tokens"] += int(made.sum())
        retired = np.flatnonzero(live & done)
        slot_step[live] = step[live]
        slot_row[retired] = -1
        pending_inserts = fill([int(b) for b in retired])  # dispatched now, run next
        previous = (block_toks, block_lps, block_rows, made, retired, finished)
    yield from assemble(previous)
    if stats is not None:
        stats.update(counters)


def generate(cfg: ModelConfig, params, prompts, sampling: SamplingParams, seed: int = 0,
             mesh=None, *, max_batch_tokens: int | None = None, engine: str = "continuous",
             decode_slots: int | None = None, steps_per_sync: int = DEFAULT_STEPS_PER_SYNC,
             decode_params=None, layout: str | None = None) -> GenerationOutput:
    """Sample `sampling.n` completions for each prompt (see sampler.generate for the
    arguments and the output).

    engine: "continuous" (this module: decode slots refilled as rows finish) or "static"
    (sampler.generate: chunks run until their longest row stops). For a seed both return
    the same tokens, lengths and finished flags, and logprobs equal up to float rounding.
    decode_slots, steps_per_sync: see generate_stream (continuous engine only);
    decode_params, layout: see generate_stream (both engines).
    """
    check_engine_settings(engine, decode_slots, steps_per_sync)
    if engine == "static":
        return sampler.generate(cfg, params, prompts, sampling, seed=seed, mesh=mesh,
                                max_batch_tokens=max_batch_tokens, decode_params=decode_params,
                                layout=layout)
    stream = generate_stream(cfg, params, prompts, sampling, seed=seed, mesh=mesh,
                             max_batch_tokens=max_batch_tokens, decode_slots=decode_slots,
                             steps_per_sync=steps_per_sync, decode_params=decode_params,
                             layout=layout)
    return collect(stream, len(prompts) * sampling.n, sampling.max_new_tokens)


def collect(rows, num_rows: int, max_new_tokens: int) -> GenerationOutput:
    """FinishedRows (any order) -> the prompt-major GenerationOutput of `generate`."""
    tokens = np.full((num_rows, max_new_tokens), PAD_TOKEN, np.int32)
    logprobs = np.zeros((num_rows, max_new_tokens), np.float32)
    lengths = np.zeros(num_rows, np.int32)
    finished = np.zeros(num_rows, bool)
    for row in rows:
        tokens[row.index, :row.length] = row.tokens
        logprobs[row.index, :row.length] = row.logprobs
        lengths[row.index] = row.length
        finished[row.index] = row.finished
    return GenerationOutput(tokens=tokens, logprobs=logprobs, lengths=lengths, finished=finished)
