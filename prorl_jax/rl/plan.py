"""`train --dry-run`: parameter count, per-device memory and batch shapes, computed
arithmetically from the config so it works for a 1.5B model on a laptop (nothing allocated).
"""

from __future__ import annotations

import json
import pathlib

from prorl_jax.config import TrainConfig
from prorl_jax.errors import ConfigError
from prorl_jax.model.config import ModelConfig

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GiB = 1024**3


def model_config_for(cfg: TrainConfig) -> ModelConfig:
    """The architecture a run will train, read without loading any weights."""
    m = cfg.model
    path = None
    if m.path is not None:
        from prorl_jax.paths import resolve_model_dir

        path = pathlib.Path(resolve_model_dir(m.path, must_exist=False)) / "config.json"
    if path is not None and path.is_file():
        base = ModelConfig.from_hf_config(json.loads(path.read_text()))
    elif path is not None and m.preset is None:
        raise ConfigError(f"model.path: {path} not found (set model.preset to plan without it)")
    elif m.preset is not None:
        base = ModelConfig.preset(m.preset)
    elif m.config is not None:
        base = m.config
    else:
        raise ConfigError("model: give one of path, preset or config")
    return base.replace(**m.numerics())


# Activation model of one micro-batch's gradient, in floats per token (A = one layer's
# forward activations per token, 4D + 2NH + 2KH + 3F). Coefficients were read off XLA's
# compiled.memory_analysis() on CPU (tests/rl/test_plan.py checks them on other shapes):
# the backward of one layer holds ~2.65 A per token (plus attention); remat "none" saves
# ~0.9 A per layer (dense; blockwise's custom VJP keeps its q/k/v/out residuals: ~1.5 A),
# "save_dots" keeps the matmul outputs (~0.6 A, not measured), "full" only the layer input D.
_LAYER_WORKING = 2.65
_SAVED = {"none": 0.9, "save_dots": 0.6}
_SAVED_BLOCKWISE_NONE = 1.5
# Dense attention: float32 scores / probabilities [rows, N, T, S]. remat none keeps 2 per
# layer for the backward; the layer being differentiated works on ~3 more.
_DENSE_SAVED_PER_LAYER = 2
_DENSE_WORKING = 3.25


def attention_kind(mc: ModelConfig) -> str:
    """The attention memory class a training step gets: "dense" (T x S scores) or "flash"
    (blockwise, and the cudnn / splash kernels, which keep O(T x block)). auto plans as
    on an accelerator, where it picks a flash kernel."""
    return "dense" if mc.attention_impl == "dense" else "flash"


def micro_batch_bytes(mc: ModelConfig, rows: int, T: int, tensor: int = 1,
                      chunk_size: int = 512, loss_columns: int | None = None) -> dict:
    """Temporary memory (bytes) of the gradient of one micro-batch of `rows` x T tokens
    on one device: the parts of XLA's temp allocation (see the coefficients above).
    loss_columns: R, the columns per row the lm head runs on (packed: the loss columns;
    None = all T)."""
    abytes = _BYTES[mc.dtype]
    D, F, L, V = mc.hidden_size, mc.intermediate_size, mc.num_hidden_layers, mc.vocab_size
    N, K, H = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
    A = 4 * D + (2 * N * H + 2 * K * H + 3 * F) / tensor
    tokens = rows * T
    kind = attention_kind(mc)
    if mc.remat == "full":
        saved = L * tokens * D * abytes
    elif mc.remat == "none" and kind == "flash":
        saved = L * tokens * _SAVED_BLOCKWISE_NONE * A * abytes
    else:
        saved = L * tokens * _SAVED[mc.remat] * A * abytes
    working = tokens * _LAYER_WORKING * A * abytes
    scores = rows * max(1, N // tensor) * T * T * 4  # one layer's float32 [rows, N, T, S]
    if kind == "dense":
        attn = scores * (_DENSE_WORKING + (_DENSE_SAVED_PER_LAYER * L if mc.remat == "none" else 0))
    else:
        bq, bk = min(mc.attention_block_q, T), min(mc.attention_block_kv, T)
        attn = 4 * rows * max(1, N // tensor) * bq * bk * 4  # a few float32 tiles
    # The lm head runs over its R columns in chunks: logits, softmax and their cotangent of
    # one chunk, plus (packed) the gathered hidden [rows, R, D] and its cotangent.
    R = T if loss_columns is None else min(loss_columns, T)
    logits = 3 * rows * min(chunk_size, R) * V * 4 / tensor
    if loss_columns is not None:
        logits += 2 * rows * R * D * abytes
    return {"saved activations": saved, "layer backward": working,
            f"attention ({mc.attention_impl}, {kind})": attn, "chunked logits": logits}


def micro_batch_layout(cfg: TrainConfig) -> dict:
    """Rows, row length T and lm-head columns per row R of the largest micro-batch one
    device computes."""
    from prorl_jax.rl.batch import loss_columns_len, micro_batch_tokens, pack_length

    longest = cfg.sampling.max_prompt_tokens + cfg.sampling.max_new_tokens
    shards_batch = cfg.mesh.data * cfg.mesh.fsdp
    if cfg.rl.pack_sequences:
        budget = micro_batch_tokens(cfg)
        T = pack_length(longest, budget, dense=cfg.model.attention_impl == "dense")
        # The lm head's columns: at most a row full of response tokens.
        return {"rows": budget // T, "T": T, "R": loss_columns_len(T, T),
                "what": f"packed, {budget} tokens per device"}
    micro_rows = cfg.rl.mini_batch_prompts * cfg.sampling.n // cfg.rl.micro_batches
    return {"rows": max(1, micro_rows // shards_batch), "T": longest,
            "R": cfg.sampling.max_new_tokens,
            "what": f"padded, {micro_rows} sequences per micro-batch"}


def memory_plan(cfg: TrainConfig, model_cfg: ModelConfig | None = None) -> dict:
    """Per-device memory estimate (bytes) of each part of a training step.

    Params, optimizer moments, gradients and the reference are sharded over fsdp x tensor
    (training rules). The update's temporaries are those of one micro-batch
    (`micro_batch_bytes`: saved activations by the remat policy, one layer's backward,
    the attention of the chosen implementation, the chunked lm head) at the largest
    micro-batch the layout allows (`micro_batch_layout`). The KV cache of the sampler holds
    prompt + response for every sequence of a sampler call (or every chunk of
    sampling.max_batch_tokens, or the continuous engine's sampling.decode_slots), batch
    over data x fsdp and kv-heads over tensor (sampling rules). The sampler and the update run one after the
    other, so the peak is the persistent state plus the larger phase; `bound` names it.
    """
    mc = model_cfg or model_config_for(cfg)
    mesh = cfg.mesh
    shards_param = mesh.fsdp * mesh.tensor
    shards_batch = mesh.data * mesh.fsdp
    n_params = mc.num_params()
    pbytes = _BYTES[mc.param_dtype]
    abytes = _BYTES[mc.dtype]
    params = n_params * pbytes / shards_param
    # optax adamw keeps mu and nu in the params' dtype.
    opt = 2 * n_params * pbytes / shards_param
    grads = n_params * pbytes / shards_param
    reference = params
    n = cfg.sampling.n
    seq = cfg.sampling.max_prompt_tokens + cfg.sampling.max_new_tokens
    micro = micro_batch_layout(cfg)
    step = micro_batch_bytes(mc, micro["rows"], micro["T"], mesh.tensor,
                             loss_columns=micro["R"])
    # The micro-batch's own arrays: ~9 int32 / float32 values per token (batch.py).
    step["micro-batch arrays"] = 9 * 4 * micro["rows"] * micro["T"]
    update = grads + sum(step.values())
    L = mc.num_hidden_layers
    gen_rows = cfg.rl.prompts_per_step * n
    gen_rows_dev = max(1, gen_rows // shards_batch)
    kv_heads_dev = max(1, mc.num_key_value_heads // mesh.tensor)
    kv_cache = 2 * L * gen_rows_dev * seq * kv_heads_dev * mc.head_dim * abytes
    if cfg.sampling.max_batch_tokens:
        chunk_rows = max(1, cfg.sampling.max_batch_tokens // seq)
        kv_cache = min(kv_cache, 2 * L * max(1, chunk_rows // shards_batch) * seq * kv_heads_dev
                       * mc.head_dim * abytes)
    if cfg.sampling.engine == "continuous" and cfg.sampling.decode_slots:
        # The continuous engine's cache: decode_slots slots of prompt + response each.
        kv_cache = 2 * L * max(1, cfg.sampling.decode_slots // shards_batch) * seq \
            * kv_heads_dev * mc.head_dim * abytes
    parts = {"params": params, "optimizer_state": opt, "gradients": grads, "reference": reference,
             **{f"update: {k}": v for k, v in step.items()}, "kv_cache (sampler)": kv_cache}
    if kv_cache >= update:
        bound = "the sampler's KV cache"
    else:
        bound = "update: " + max(step, key=step.get)
    return {
        "model": mc, "num_params": n_params, "devices": mesh.data * mesh.fsdp * mesh.tensor,
        "mesh": {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor},
        "parts": parts, "micro_batch": micro,
        "peak": params + opt + reference + max(update, kv_cache),
        "bound": bound,
        "shapes": {
            "rollout sequences per step": f"{cfg.rl.prompts_per_step} prompts x n={n} = {gen_rows}",
            "sequence length (prompt + response)": f"{cfg.sampling.max_prompt_tokens} + "
                                                   f"{cfg.sampling.max_new_tokens} = {seq}",
            "mini-batch": f"{cfg.rl.mini_batch_prompts * n} sequences "
                          f"({cfg.rl.prompts_per_step // cfg.rl.mini_batch_prompts} updates per step)",
            "micro-batch": f"{micro['what']}: {micro['rows']} rows x {micro['T']} tokens per device",
        },
    }


def format_plan(cfg: TrainConfig, plan: dict, config_path: str | pathlib.Path | None) -> str:
    mc = plan["model"]
    lines = [
        f"plan for {config_path or 'defaults'}",
        f"  model: {mc.model_type}, {mc.num_hidden_layers} layers, hidden {mc.hidden_size}, "
        f"{mc.num_attention_heads} q / {mc.num_key_value_heads} kv heads, vocab {mc.vocab_size}; "
        f"{plan['num_params']:,} parameters ({mc.param_dtype} params, {mc.dtype} compute, "
        f"remat {mc.remat})",
        f"  mesh: data={plan['mesh']['data']} fsdp={plan['mesh']['fsdp']} "
        f"tensor={plan['mesh']['tensor']} ({plan['devices']} devices)",
        "  batch shapes:",
        *[f"    {k}: {v}" for k, v in plan["shapes"].items()],
        "  memory per device (estimate):",
        *[f"    {k:<40} {v / GiB:8.2f} GiB" for k, v in plan["parts"].items()],
        f"    {'peak':<40} {plan['peak'] / GiB:8.2f} GiB  (bound by {plan['bound']})",
        f"  steps: {cfg.steps}; rollout temperature {cfg.sampling.temperature}; "
        f"clip ({cfg.rl.clip_low}, {cfg.rl.clip_high}), dual clip {cfg.rl.clip_c}; "
        f"KL {cfg.rl.kl_kind} x {cfg.rl.kl_coef}; lr {cfg.optim.lr}",
    ]
    return "\n".join(lines)
