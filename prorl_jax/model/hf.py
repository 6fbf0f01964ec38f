"""Hugging Face checkpoints <-> prorl_jax params, through one mapping table.

`load_hf` reads a local transformers Qwen2/Qwen3 directory (config.json + one or sharded
safetensors); `save_hf` writes one that `AutoModelForCausalLM.from_pretrained` loads.
Every tensor goes through `_TABLE` and one of a closed set of transforms (transposes and
reshapes only: transformers' half-split RoPE is what our model uses, so no permutation).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np

from prorl_jax import sharding
from prorl_jax.errors import CheckpointError, ConfigError
from prorl_jax.model import qwen
from prorl_jax.model import safetensors_io as st
from prorl_jax.model.config import ModelConfig
from prorl_jax.tokenizer import TOKENIZER_FILES

# hf name ({i} = layer index) -> (path in our params, transform). Entries whose path the
# config does not create (lm_head when tied, biases, q/k norms) are simply not expected.
_TABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "model.embed_tokens.weight": (("embed", "embedding"), "identity"),
    "model.layers.{i}.input_layernorm.weight": (("layers", "attn_norm", "scale"), "identity"),
    "model.layers.{i}.self_attn.q_proj.weight": (("layers", "attn", "q", "kernel"), "heads_in"),
    "model.layers.{i}.self_attn.q_proj.bias": (("layers", "attn", "q", "bias"), "heads_bias"),
    "model.layers.{i}.self_attn.k_proj.weight": (("layers", "attn", "k", "kernel"), "heads_in"),
    "model.layers.{i}.self_attn.k_proj.bias": (("layers", "attn", "k", "bias"), "heads_bias"),
    "model.layers.{i}.self_attn.v_proj.weight": (("layers", "attn", "v", "kernel"), "heads_in"),
    "model.layers.{i}.self_attn.v_proj.bias": (("layers", "attn", "v", "bias"), "heads_bias"),
    "model.layers.{i}.self_attn.q_norm.weight": (("layers", "attn", "q_norm", "scale"), "identity"),
    "model.layers.{i}.self_attn.k_norm.weight": (("layers", "attn", "k_norm", "scale"), "identity"),
    "model.layers.{i}.self_attn.o_proj.weight": (("layers", "attn", "o", "kernel"), "heads_out"),
    "model.layers.{i}.post_attention_layernorm.weight": (("layers", "mlp_norm", "scale"), "identity"),
    "model.layers.{i}.mlp.gate_proj.weight": (("layers", "mlp", "gate", "kernel"), "transpose"),
    "model.layers.{i}.mlp.up_proj.weight": (("layers", "mlp", "up", "kernel"), "transpose"),
    "model.layers.{i}.mlp.down_proj.weight": (("layers", "mlp", "down", "kernel"), "transpose"),
    "model.norm.weight": (("final_norm", "scale"), "identity"),
    "lm_head.weight": (("lm_head", "kernel"), "transpose"),
}

# Tensors some writers add that carry no information for us.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _hf_shape(transform: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """HF tensor shape for one (per-layer) param shape of ours."""
    if transform == "identity":
        return ours
    if transform == "transpose":  # ours [in, out], torch Linear [out, in]
        return ours[::-1]
    if transform == "heads_in":  # ours [D, N, H], torch [N*H, D]
        return (ours[1] * ours[2], ours[0])
    if transform == "heads_out":  # ours [N, H, D], torch [D, N*H]
        return (ours[2], ours[0] * ours[1])
    if transform == "heads_bias":  # ours [N, H], torch [N*H]
        return (ours[0] * ours[1],)
    raise AssertionError(transform)


def _to_ours(transform: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if transform in ("identity", "heads_bias"):
        return x.reshape(ours)
    return x.T.reshape(ours)  # transpose / heads_in / heads_out


def _to_hf(transform: str, y: np.ndarray, hf: tuple[int, ...]) -> np.ndarray:
    if transform in ("identity", "heads_bias"):
        return y.reshape(hf)
    if transform == "heads_in":
        return y.reshape(y.shape[0], -1).T
    return y.reshape(-1, y.shape[-1]).T  # transpose / heads_out


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _expected(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], str, int | None, tuple[int, ...]]]:
    """hf name -> (our path, transform, layer index or None, hf shape) for this config."""
    shapes = qwen.param_shapes(cfg)
    out = {}
    for pattern, (path, transform) in _TABLE.items():
        try:
            shape = tuple(_get(shapes, path).shape)
        except KeyError:
            continue
        if path[0] == "layers":
            for i in range(cfg.num_hidden_layers):
                out[pattern.format(i=i)] = (path, transform, i, _hf_shape(transform, shape[1:]))
        else:
            out[pattern] = (path, transform, None, _hf_shape(transform, shape))
    return out


def read_hf_config(path: str) -> dict[str, Any]:
    """config.json of a local checkpoint directory as a dict (CheckpointError if unusable)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{file} is missing (not a Hugging Face checkpoint directory)")
    try:
        with open(file) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return hf


def _open_tensors(path: str) -> dict[str, st.SafetensorsFile]:
    """hf tensor name -> the file holding it; duplicates across shards are an error."""
    index_file = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index_file):
        try:
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_file}: invalid index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        weight_map, files = None, ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    where: dict[str, st.SafetensorsFile] = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: shard listed in the index is missing")
        shard = st.SafetensorsFile(file)
        for tensor in shard.entries:
            if tensor in where:
                raise CheckpointError(f"duplicate tensor {tensor} in {os.path.basename(where[tensor].path)} "
                                      f"and {name}")
            where[tensor] = shard
    if weight_map is not None:
        for tensor, name in weight_map.items():
            if tensor not in where or os.path.basename(where[tensor].path) != name:
                raise CheckpointError(f"{index_file}: tensor {tensor} is not in {name}")
    return where


def load_hf(path: str, dtype: str | None = None, mesh=None, rules=None):
    """Load a local Hugging Face Qwen2/Qwen3 checkpoint.

    Args:
      path: directory with config.json and model.safetensors (or a sharded index).
      dtype: param (and compute) dtype; None keeps the checkpoint's dtype (config "dtype" /
        "torch_dtype", float32 when absent). Use cfg.replace(dtype=...) for another compute dtype.
      mesh: with a mesh, every tensor is read straight into its sharding, one device block
        at a time (no full host copy of the model in any dtype).
      rules: sharding rules for the mesh (default sharding.TRAIN_RULES).
    Returns:
      (ModelConfig, params) with params as in `prorl_jax.model.qwen`.
    Raises:
      CheckpointError naming the file, field or tensor at fault.
    """
    hf = read_hf_config(path)
    overrides = {} if dtype is None else {"dtype": dtype, "param_dtype": dtype}
    try:
        cfg = ModelConfig.from_hf_config(hf, **overrides)
    except ConfigError as e:
        raise CheckpointError(f"{os.path.join(path, 'config.json')}: {e}") from e
    where = _open_tensors(path)
    expected = _expected(cfg)
    for name in where:
        if name in expected or name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # some writers store the tied head anyway; the embedding is the truth
        raise CheckpointError(f"unmapped tensor {name} in {os.path.basename(where[name].path)}")
    for name, (_, _, _, shape) in expected.items():
        if name not in where:
            raise CheckpointError(f"missing tensor {name} (required by config.json)")
        if where[name].shape(name) != shape:
            raise CheckpointError(f"tensor {name} has shape {where[name].shape(name)}, "
                                  f"expected {shape} from config.json")

    shapes = qwen.param_shapes(cfg)
    if mesh is None:
        targets = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), shapes)
    else:
        targets = qwen.param_shardings(cfg, mesh, sharding.TRAIN_RULES if rules is None else rules)
    by_path: dict[tuple[str, ...], tuple[str, dict[int | None, str]]] = {}
    for name, (p, transform, layer, _) in expected.items():
        by_path.setdefault(p, (transform, {}))[1][layer] = name
    params: dict = {}
    for p, (transform, names) in by_path.items():
        spec = _get(shapes, p)
        arr = _load_param(where, names, transform, spec.shape, spec.dtype, _get(targets, p))
        node = params
        for key in p[:-1]:
            node = node.setdefault(key, {})
        node[p[-1]] = arr
    return cfg, params


def _load_param(where, names, transform, shape, dtype, target) -> jax.Array:
    """One (possibly layer-stacked) param assembled block by block for its sharding."""
    stacked = None not in names
    cache: dict[tuple, np.ndarray] = {}

    def one(layer):
        name = names[layer]
        return _to_ours(transform, where[name].get(name), shape[1:] if stacked else shape)

    def block(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in cache:  # replicated blocks are requested once per device
            if stacked:
                layers = range(*index[0].indices(shape[0]))
                cache[key] = np.stack([one(i)[index[1:]].astype(dtype) for i in layers])
            else:
                cache[key] = one(None)[index].astype(dtype)
        return cache[key]

    return jax.make_array_from_callback(shape, target, block)


def save_hf(path: str, cfg: ModelConfig, params, tokenizer_dir: str | None = None,
            max_shard_bytes: int = 5 * 10**9) -> None:
    """Write params as a Hugging Face checkpoint directory.

    Args:
      path: output directory (created; existing model files are overwritten).
      cfg: the architecture; must be expressible as a transformers Qwen2/Qwen3 config.
      params: as from init_params / load_hf (sharded arrays are gathered one layer at a time;
        under several processes every process must call save_hf: all take part in each
        gather and process 0 alone writes the directory).
      tokenizer_dir: when given, its tokenizer files are copied alongside.
      max_shard_bytes: shard size limit; above it tensors go to model-0000k-of-0000n files
        with a model.safetensors.index.json.
    Tensors keep the params' dtype; config.json records cfg.param_dtype.
    """
    hf_config = cfg.to_hf_config()
    expected = _expected(cfg)
    for name, (p, _, _, _) in expected.items():
        try:
            _get(params, p)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"params lack {'/'.join(p)} needed for tensor {name}") from e
    shapes = {name: e[3] for name, e in expected.items()}
    dtypes = {name: np.dtype(_get(params, e[0]).dtype) for name, e in expected.items()}
    hf_config["dtype"] = str(np.dtype(_get(params, ("embed", "embedding")).dtype))

    shards: list[list[str]] = [[]]
    size = 0
    for name in expected:
        nbytes = math.prod(shapes[name]) * dtypes[name].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    def fetch(name: str) -> np.ndarray:
        p, transform, layer, shape = expected[name]
        return _to_hf(transform, _host_value(_get(params, p), layer), shape)

    # Several processes: params span devices no single process can read, so every
    # process takes part in gathering each tensor (collectives, same order everywhere)
    # and only process 0 writes.
    if jax.process_count() > 1 and jax.process_index() != 0:
        leaves = jax.tree.leaves(params)
        if not all(getattr(x, "is_fully_addressable", True) for x in leaves):
            for names in shards:
                for name in names:
                    fetch(name)
        _sync("prorl_jax.save_hf")
        return
    os.makedirs(path, exist_ok=True)
    for stale in os.listdir(path):
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".index.json")):
            os.remove(os.path.join(path, stale))
    if len(shards) == 1:
        st.write(os.path.join(path, "model.safetensors"), shards[0], shapes, dtypes, fetch)
    else:
        weight_map = {}
        for k, names in enumerate(shards):
            file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            st.write(os.path.join(path, file), names, shapes, dtypes, fetch)
            weight_map.update(dict.fromkeys(names, file))
        total = sum(math.prod(shapes[n]) * dtypes[n].itemsize for n in expected)
        _write_json(os.path.join(path, "model.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(os.path.join(path, "config.json"), hf_config)
    generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id") if hf_config[k] is not None}
    _write_json(os.path.join(path, "generation_config.json"), generation)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, path)
    _sync("prorl_jax.save_hf")


def _host_value(leaf, layer: int | None) -> np.ndarray:
    """One tensor (one layer of a stacked one) as a host array, gathered if need be."""
    from prorl_jax.distributed import fetch

    return fetch(leaf if layer is None else leaf[layer])


def _sync(name: str) -> None:
    from prorl_jax.distributed import sync

    sync(name)


def copy_tokenizer(src: str, dst: str) -> list[str]:
    """Copy the tokenizer files of `src` into `dst`; returns the names copied."""
    if not os.path.isdir(src):
        raise CheckpointError(f"tokenizer directory {src} does not exist")
    copied = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if not copied:
        raise CheckpointError(f"tokenizer directory {src} holds no tokenizer files "
                              f"(looked for {', '.join(TOKENIZER_FILES)})")
    for name in copied:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return copied


def _write_json(file: str, obj) -> None:
    with open(file, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
