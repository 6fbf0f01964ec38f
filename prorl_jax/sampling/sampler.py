"""generate(): n samples per prompt with one prefill and a lax.while_loop decode.

Shapes are bucketed so that a trainer calling every step with similar batches reuses one
compiled program: rows (prompts x n) go up to a power of two, prompt length up to a power
of two (at least MIN_PROMPT_BUCKET). One program exists per (row bucket, prompt bucket,
max_new_tokens, distinct prompts per chunk (from n), static strategy fields, number of stop
ids rounded up to 4, mesh); temperature, top_p, the seed and the stop ids themselves are
runtime values.

Prefill is shared: each distinct prompt of a chunk is prefilled once and its cache
gathered into its n sample rows. Decode steps run on the weights of a layout, a static
choice (`default_layout`): on CPU "decode", per-layer output-major weights
(qwen.decode_layout) with per-layer cache buffers (qwen.split_cache) that the loop updates
in place (measured faster on XLA:CPU, see docs/architecture.md); elsewhere "train", the
params as trained, with no second copy of the weights. `decode_params` builds the layout's
params; callers that sample many times from one policy version build it once.

Randomness: row r of the output (global index, prompt-major) draws its token at step t from
fold_in(fold_in(key(seed), r), t). Padding rows, the bucket size, chunking and the mesh
therefore do not change any row's random stream, which makes chunked and sharded results
equal to single-device unchunked ones.

Chunking: with `max_batch_tokens`, rows are processed in chunks whose KV cache (rows x
(prompt bucket + max_new_tokens) token slots, padding rows included) fits the budget. Every
chunk uses the same prompt bucket (from the longest prompt overall) and the same row count,
so all chunks share one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prorl_jax import distributed
from prorl_jax import sharding as shd
from prorl_jax.errors import UserError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.rl.logprobs import token_logprobs  # the trainer's function: one graph
from prorl_jax.sampling.settings import LAYOUTS, EngineError
from prorl_jax.sampling.strategies import SamplingParams, Strategy, strategy_for

MIN_PROMPT_BUCKET = 16
PAD_TOKEN = 0  # written after a row's stop token; its logprob there is 0

@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """Completions of `generate`, rows prompt-major (the n samples of prompt 0 first).

    tokens:   int32 [R, max_new_tokens], R = P * n; PAD_TOKEN after the stop token.
    logprobs: float32 [R, max_new_tokens]; log softmax(logits / temperature) of each token
              over the full vocabulary (temperature 1 for greedy); 0 after the stop.
    lengths:  int32 [R]; generated tokens including the stop token.
    finished: bool [R]; True when a stop token ended the row, False when the budget did.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray


class PromptError(UserError, ValueError):
    """The prompts passed to generate are unusable (empty, out of vocabulary, too long)."""


def bucket(n: int, minimum: int = 1, multiple: int = 1) -> int:
    """Smallest power of two >= max(n, minimum), rounded up to a multiple of `multiple`."""
    p = 1 << max(0, math.ceil(math.log2(max(n, minimum, 1))))
    return -(-p // multiple) * multiple


def chunk_rows(num_rows: int, slots_per_row: int, max_batch_tokens: int | None,
               multiple: int = 1) -> int:
    """Rows per compiled chunk.

    Args:
      num_rows: rows to generate (prompts x n).
      slots_per_row: KV-cache slots one row needs (prompt bucket + max_new_tokens).
      max_batch_tokens: KV-cache budget in token slots for one chunk, None or 0 for no limit.
      multiple: the chunk row count must divide evenly over this many batch shards.
    Returns:
      the row count of every chunk: bucket(num_rows) when that fits, else the largest
      power of two (times `multiple`) that fits; at least `multiple`.
    Raises:
      UserError when not even one row fits the budget.
    """
    whole = bucket(num_rows, multiple=multiple)
    if not max_batch_tokens:
        return whole
    fit = max_batch_tokens // slots_per_row
    if fit < 1:
        raise UserError(
            f"max_batch_tokens={max_batch_tokens} is smaller than one row's KV cache "
            f"({slots_per_row} slots = prompt bucket + max_new_tokens)")
    if whole <= fit:
        return whole
    rows = 1 << int(math.log2(fit))
    return max(multiple, rows // multiple * multiple)


def default_layout(mesh=None) -> str:
    """The weight layout decode steps run on: "decode" (qwen.decode_layout) on CPU, where
    its output-major kernels were measured faster (docs/performance.md), "train" on GPU
    and TPU (the decode layout is a second copy of every matrix, and was not measured
    there)."""
    device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
    return "decode" if device.platform == "cpu" else "train"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise EngineError(f"sampling layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def sample_placed(cfg: ModelConfig, params, mesh=None):
    """The params resharded to the SAMPLE_RULES layout under a mesh (no copy without)."""
    if mesh is None:
        return params
    return jax.device_put(params, shd.shardings_for(
        qwen.param_axes(cfg), mesh, shd.SAMPLE_RULES, shapes=params))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _layout_params(cfg: ModelConfig, params):
    return qwen.decode_layout(cfg, params)


def decode_params(cfg: ModelConfig, params, layout: str | None = None, mesh=None):
    """The params in the layout decode steps run on ("decode": qwen.decode_layout, a
    transposed copy of every matrix; "train": the params as they are, placed for sampling
    under a mesh). Build it once per policy version and pass it to generate /
    generate_stream as `decode_params` (with the same layout)."""
    return _decode_params(cfg, params, check_layout(layout or default_layout(mesh)), mesh)


def _decode_params(cfg, params, layout, mesh):
    params = sample_placed(cfg, params, mesh)
    return _layout_params(cfg, params) if layout == "decode" else params


@struct.dataclass
class _Loop:
    """Decode-loop carry. M = max_new_tokens."""

    cache: qwen.KVCache  # split per layer: k, v tuples of L arrays [B, K, S, H]
    step: jax.Array  # int32 []: index of the next token to write
    last: jax.Array  # int32 [B]: token written at step - 1
    tokens: jax.Array  # int32 [B, M]
    logprobs: jax.Array  # float32 [B, M]
    done: jax.Array  # bool [B]
    finished: jax.Array  # bool [B]
    lengths: jax.Array  # int32 [B]


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "layout", "mesh"))
def _sample_chunk(cfg: ModelConfig, params, layer_params, prompt: jax.Array,
                  prompt_mask: jax.Array, src: jax.Array, row_ids: jax.Array, active: jax.Array,
                  seed: jax.Array, strategy: Strategy, stop_ids: jax.Array, max_new_tokens: int,
                  layout: str, mesh=None):
    """Prefill the chunk's distinct prompts, then decode all its rows.

    Args:
      params: the params as trained (the prefill runs on them); layer_params: the same
        weights in `layout` (decode_params), which the decode steps run on.
      prompt: int32 [U, T] left-padded prompt tokens (each distinct prompt of the chunk
        once); prompt_mask int32 [U, T].
      src: int32 [B] the prompt (row of `prompt`) of each output row.
      row_ids: int32 [B] global row index (the random stream of the row).
      active: bool [B]; False for bucket-padding rows, which start done.
      seed: uint32 [].
      stop_ids: int32 [num_stop].
    Returns:
      tokens int32 [B, M], logprobs float32 [B, M], lengths int32 [B], finished bool [B].
    """
    args = (cfg, params, layer_params, prompt, prompt_mask, src, row_ids, active, seed,
            strategy, stop_ids, max_new_tokens, layout)
    if mesh is not None:
        with shd.use_rules(mesh, shd.SAMPLE_RULES):
            return _sample_body(*args)
    return _sample_body(*args)


def _sample_body(cfg, params, layer_params, prompt, prompt_mask, src, row_ids, active, seed,
                 strategy, stop_ids, max_new_tokens, layout):
    batch = src.shape[0]
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), row_ids)  # [B]
    temperature = strategy.logprob_temperature

    def pick(logits, step, done):
        """logits float32 [B, V] -> (token, logprob, hit_stop) for column `step`."""
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        tok = strategy(logits, keys)
        lp = token_logprobs(logits, tok, temperature)
        tok = jnp.where(done, PAD_TOKEN, tok)
        lp = jnp.where(done, 0.0, lp)
        stop = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1) & ~done
        return tok, lp, stop

    def record(state: _Loop, logits, cache) -> _Loop:
        tok, lp, stop = pick(logits, state.step, state.done)
        return _Loop(
            cache=cache,
            step=state.step + 1,
            last=tok,
            tokens=jax.lax.dynamic_update_slice(state.tokens, tok[:, None], (0, state.step)),
            logprobs=jax.lax.dynamic_update_slice(state.logprobs, lp[:, None], (0, state.step)),
            done=state.done | stop,
            finished=state.finished | stop,
            lengths=state.lengths + (~state.done).astype(jnp.int32),
        )

    with jax.named_scope("prefill"):
        # The n samples of a prompt share its prefill: U distinct prompts, not B rows.
        cache = qwen.init_cache(cfg, prompt.shape[0], prompt.shape[1])  # exactly T slots
        hidden, cache = qwen.forward_hidden(cfg, params, prompt, attention_mask=prompt_mask,
                                            cache=cache)  # [U, T, D]
        logits = _unembed(cfg, params, hidden[:, -1])[src]  # [B, V]
        cache = _rows_cache(cache, src, max_new_tokens, split=layout == "decode")

    start = _Loop(
        cache=cache,
        step=jnp.zeros((), jnp.int32),
        last=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, max_new_tokens), PAD_TOKEN, jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        done=~active,
        finished=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
    )
    state = record(start, logits, cache)

    def cond(state: _Loop):
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    def body(state: _Loop) -> _Loop:
        with jax.named_scope("decode_step"):
            logits, cache = qwen.forward(cfg, layer_params, state.last[:, None],
                                         cache=state.cache, layout=layout)
            return record(state, logits[:, 0], cache)

    state = jax.lax.while_loop(cond, body, state)
    return state.tokens, state.logprobs, state.lengths, state.finished


def _rows_cache(cache: qwen.KVCache, src: jax.Array, max_new_tokens: int,
                split: bool) -> qwen.KVCache:
    """The prompts' cache [L, U, K, T, H] -> one row per sample.

    Row b takes prompt src[b]'s keys and values, and max_new_tokens empty slots follow
    the T prompt slots. With `split` (the decode layout) each layer gets its own
    [B, K, T + M, H] buffer (qwen.split_cache), which the decode loop then updates in
    place; otherwise k, v stay stacked [L, B, K, T + M, H] for the training layout.
    """
    axes = qwen.cache_axes()

    def rows(x, pad, axis=0):  # [U, ...] -> [B, ...] with `pad` slots on the slot axis
        return jnp.pad(jnp.take(x, src, axis=axis), pad)

    mask = shd.constrain(rows(cache.mask, ((0, 0), (0, max_new_tokens))), axes.mask)
    if not split:
        slots = ((0, 0), (0, 0), (0, 0), (0, max_new_tokens), (0, 0))
        k = shd.constrain(rows(cache.k, slots, axis=1), axes.k)
        v = shd.constrain(rows(cache.v, slots, axis=1), axes.v)
        return qwen.KVCache(k=k, v=v, mask=mask, index=cache.index)
    slots = ((0, 0), (0, 0), (0, max_new_tokens), (0, 0))
    k = tuple(shd.constrain(rows(x, slots), axes.k[1:]) for x in cache.k)
    v = tuple(shd.constrain(rows(x, slots), axes.v[1:]) for x in cache.v)
    return qwen.KVCache(k=k, v=v, mask=mask, index=cache.index)


def _unembed(cfg: ModelConfig, params, hidden: jax.Array) -> jax.Array:
    """hidden [B, D] -> float32 logits [B, V], computed exactly as `qwen.forward` does.

    Only the last prompt position needs logits; unembedding all T positions of the
    prefill would cost B x T x V floats.
    """
    w = qwen.unembed_matrix(cfg, params).astype(hidden.dtype)  # [D, V]
    logits = jnp.einsum("BD,DV->BV", hidden, w, preferred_element_type=jnp.float32)
    return shd.constrain(logits, ("batch", "act_vocab"))


def checked_prompts(cfg: ModelConfig, prompts, max_new_tokens: int
                    ) -> tuple[list[np.ndarray], int]:
    """The prompts as int32 arrays and the longest one's length, checked for both engines.

    Raises:
      PromptError for an empty list, a prompt that is not a non-empty list of ids, ids
      outside the vocabulary, or a longest prompt + max_new_tokens beyond the model's
      positions.
    """
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise PromptError("generate needs a non-empty list of prompts (lists of token ids)")
    out = []
    for i, p in enumerate(prompts):
        arr = np.asarray(p)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise PromptError(f"prompt {i} must be a non-empty list of token ids")
        if arr.min() < 0 or arr.max() >= cfg.vocab_size:
            raise PromptError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
        out.append(arr.astype(np.int32))
    longest = max(len(p) for p in out)
    if longest + max_new_tokens > cfg.max_position_embeddings:
        raise PromptError(
            f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's max_position_embeddings ({cfg.max_position_embeddings})")
    return out, longest


def left_padded(prompts, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> left-padded int32 tokens [P, T=width] and their 0/1 mask [P, T]."""
    tokens = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return tokens, mask


def stop_id_array(stop_token_ids) -> np.ndarray:
    """Stop ids as int32, padded with -1 (never sampled) to a multiple of 4 so that the
    count rarely changes the compiled program."""
    stop_ids = np.full(bucket(len(stop_token_ids), multiple=4), -1, np.int32)
    stop_ids[:len(stop_token_ids)] = stop_token_ids
    return stop_ids


def _place(mesh, x, axes):
    if mesh is None:
        return x  # jit transfers numpy arguments itself, without an eager dispatch each
    return shd.shard_batch(x, mesh, shd.SAMPLE_RULES, axes)


def generate(cfg: ModelConfig, params, prompts, sampling: SamplingParams, seed: int = 0,
             mesh=None, *, max_batch_tokens: int | None = None, decode_params=None,
             layout: str | None = None) -> GenerationOutput:
    """Sample `sampling.n` completions for each prompt.

    Args:
      cfg: the model config.
      params: model params (under a mesh they are resharded to the SAMPLE_RULES layout).
      prompts: P lists of token ids, any lengths >= 1.
      sampling: SamplingParams.
      seed: the same seed gives the same output, whatever the chunking or mesh.
      mesh: optional Mesh ('data', 'fsdp', 'tensor'): rows over data x fsdp, heads over tensor.
        Under several processes (one global mesh) every process calls generate with the
        same prompts and seed; each places only its devices' blocks of the inputs.
      max_batch_tokens: KV-cache budget per chunk in token slots (None/0: one chunk).
      decode_params: `decode_params(cfg, params, layout, mesh)` made once by the caller
        (once per policy version); built here, once for all chunks, when None.
      layout: "decode" or "train" (default_layout when None); must match decode_params.
    Returns:
      GenerationOutput with R = P * n prompt-major rows (numpy arrays); under several
      processes every process gets all R rows, identical everywhere (`distributed.fetch`).
    Raises:
      PromptError for empty / out-of-vocabulary / too long prompts; UserError when one
      row does not fit max_batch_tokens.
    """
    layout = check_layout(layout or default_layout(mesh))
    n, new = sampling.n, sampling.max_new_tokens
    rows_prompts, longest = checked_prompts(cfg, prompts, new)
    num_rows = len(rows_prompts) * n
    width = bucket(longest, MIN_PROMPT_BUCKET)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    per_chunk = chunk_rows(num_rows, width + new, max_batch_tokens, shards)

    # One row per prompt (its n samples share the prefill).
    tokens, mask = left_padded(rows_prompts, width)
    strategy = strategy_for(sampling, cfg.vocab_size)
    stop_ids = stop_id_array(sampling.stop_token_ids)
    seed_arr = np.asarray(seed, np.uint32)
    params = sample_placed(cfg, params, mesh)
    if decode_params is None:  # once for every chunk of this call
        decode_params = _decode_params(cfg, params, layout, mesh)

    # Distinct prompts in one chunk of rows [start, start + per_chunk): fixed per (chunk
    # size, n), so every chunk and every call with these buckets shares one program.
    if per_chunk % n == 0 or n % per_chunk == 0:
        uniq = max(1, per_chunk // n)
    else:
        uniq = min(per_chunk, -(-per_chunk // n) + 1)
    # At least two: XLA:CPU folds away the size-1 dims of a one-row prefill, which rounds
    # differently from larger batches; with two rows chunked output stays bit-identical.
    uniq = max(uniq, min(2, per_chunk))
    results = []
    for start in range(0, num_rows, per_chunk):
        ids = np.arange(start, start + per_chunk)  # [C] global row ids, maybe past the end
        real = ids < num_rows
        row_prompt = np.minimum(ids, num_rows - 1) // n  # padding rows copy the last prompt
        first = row_prompt[0]
        chunk_prompts = np.minimum(np.arange(first, first + uniq), len(rows_prompts) - 1)
        out = _sample_chunk(
            cfg, params, decode_params,
            _place(mesh, tokens[chunk_prompts], ("batch", "seq")),
            _place(mesh, mask[chunk_prompts], ("batch", "seq")),
            _place(mesh, (row_prompt - first).astype(np.int32), ("batch",)),
            _place(mesh, ids.astype(np.int32), ("batch",)),
            _place(mesh, real, ("batch",)),
            seed_arr, strategy, stop_ids, max_new_tokens=new, layout=layout, mesh=mesh)
        # fetch: the rows span every process's devices; all-gathered under several.
        results.append([x[real] for x in distributed.fetch(out)])
    cat = [np.concatenate(parts) for parts in zip(*results)]
    return GenerationOutput(tokens=cat[0], logprobs=cat[1], lengths=cat[2], finished=cat[3])

