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
        from prorl_jax.rl.trainer import resolve_model_path

        path = resolve_model_path(m.path) / "config.json"
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


def memory_plan(cfg: TrainConfig, model_cfg: ModelConfig | None = None) -> dict:
    """Per-device memory estimate (bytes) of each part of a training step.

    Params, optimizer moments and the reference are sharded over fsdp x tensor (training
    rules). Activations: per micro-batch, sharded over data x fsdp (batch) and tensor;
    with remat "full" only each layer's input is kept for the backward pass; otherwise a
    layer keeps roughly its q/k/v/o, MLP and norm activations (about 4D + 3F per token).
    The KV cache of the sampler holds prompt + response for every rollout sequence, batch
    over data x fsdp and kv-heads over tensor (sampling rules).
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
    micro_rows = cfg.rl.mini_batch_prompts * n // cfg.rl.micro_batches
    rows_dev = max(1, micro_rows // shards_batch)
    D, F, L = mc.hidden_size, mc.intermediate_size, mc.num_hidden_layers
    per_token_layer = D if mc.remat == "full" else (4 * D + 3 * F) // (mesh.tensor if mc.remat == "none" else 1)
    if mc.remat == "save_dots":
        per_token_layer = (2 * D + 2 * F) // mesh.tensor + D
    activations = rows_dev * seq * L * per_token_layer * abytes
    # One layer recomputed/live at a time, plus the chunked lm-head (fp32 logits of a chunk).
    activations += rows_dev * seq * (4 * D + 3 * F) * abytes + rows_dev * 1024 * mc.vocab_size * 4
    gen_rows = cfg.rl.prompts_per_step * n
    gen_rows_dev = max(1, gen_rows // shards_batch)
    kv_heads_dev = max(1, mc.num_key_value_heads // mesh.tensor)
    kv_cache = 2 * L * gen_rows_dev * seq * kv_heads_dev * mc.head_dim * abytes
    if cfg.sampling.max_batch_tokens:
        chunk_rows = max(1, cfg.sampling.max_batch_tokens // seq)
        kv_cache = min(kv_cache, 2 * L * max(1, chunk_rows // shards_batch) * seq * kv_heads_dev
                       * mc.head_dim * abytes)
    parts = {"params": params, "optimizer_state": opt, "gradients": grads, "reference": reference,
             "activations (one micro-batch)": activations, "kv_cache (sampler)": kv_cache}
    return {
        "model": mc, "num_params": n_params, "devices": mesh.data * mesh.fsdp * mesh.tensor,
        "mesh": {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor},
        "parts": parts,
        # The sampler and the update run one after the other, so peak = state + larger phase.
        "peak": params + opt + reference + max(grads + activations, kv_cache),
        "shapes": {
            "rollout sequences per step": f"{cfg.rl.prompts_per_step} prompts x n={n} = {gen_rows}",
            "sequence length (prompt + response)": f"{cfg.sampling.max_prompt_tokens} + "
                                                   f"{cfg.sampling.max_new_tokens} = {seq}",
            "mini-batch": f"{cfg.rl.mini_batch_prompts * n} sequences "
                          f"({cfg.rl.prompts_per_step // cfg.rl.mini_batch_prompts} updates per step)",
            "micro-batch": f"{micro_rows} sequences x {seq} tokens, {rows_dev} per device",
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
        *[f"    {k:<30} {v / GiB:8.2f} GiB" for k, v in plan["parts"].items()],
        f"    {'peak':<30} {plan['peak'] / GiB:8.2f} GiB",
        f"  steps: {cfg.steps}; rollout temperature {cfg.sampling.temperature}; "
        f"clip ({cfg.rl.clip_low}, {cfg.rl.clip_high}), dual clip {cfg.rl.clip_c}; "
        f"KL {cfg.rl.kl_kind} x {cfg.rl.kl_coef}; lr {cfg.optim.lr}",
    ]
    return "\n".join(lines)
