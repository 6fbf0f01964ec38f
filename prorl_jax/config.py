"""Typed, frozen run configuration: YAML files map one to one onto these dataclasses.

Every YAML key mirrors a dataclass field. An unknown key, a value of the wrong type or an
invalid value raises `ConfigError` naming the dotted key and the file it came from.
`--set section.key=value` overrides are parsed as YAML scalars and type-checked the same way.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import types
import typing
from typing import Any

import yaml

from prorl_jax.errors import ConfigError
from prorl_jax.model.config import ModelConfig
from prorl_jax.rl.loss_names import AGG_MODES, KL_KINDS  # the loss library's names
from prorl_jax.sampling.checks import check_sampling
from prorl_jax.sampling.settings import check_engine_settings

# Shipped configs live inside the package (prorl_jax/configs, listed in pyproject's
# package-data), so a wheel or `pip install .` has them too; the repository's top-level
# configs/ is a symlink to this directory, for `--config configs/demo.yaml`.
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to train: `path` (a local HF dir) or a random init from `preset` / `config`
    with the tokenizer of the checkpoint directory `tokenizer`.

    `preset` given together with `path` names the architecture the checkpoint must have;
    `train --dry-run` uses it when the checkpoint is not on this machine.
    """

    path: str | None = None  # local Hugging Face checkpoint directory (or builtin:NAME)
    preset: str | None = None  # a named architecture, randomly initialised
    config: ModelConfig | None = None  # a literal architecture, randomly initialised
    tokenizer: str | None = None  # random init only: a directory holding the tokenizer
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | save_dots
    attention_impl: str = "auto"  # auto | dense | blockwise | cudnn | splash
    attention_block_q: int = 128  # blockwise / splash tile sizes
    attention_block_kv: int = 256
    layer_loop: str = "auto"  # auto | scan | unrolled

    def __post_init__(self):
        if self.config is not None and (self.path is not None or self.preset is not None):
            raise ConfigError("model: give either config or path/preset, not both")
        if self.tokenizer is not None and self.path is not None:
            raise ConfigError("model.tokenizer is for a random init; a model.path checkpoint "
                              "brings its own tokenizer")
        ModelConfig(**self.numerics())

    def numerics(self) -> dict:
        """The ModelConfig fields this section sets on top of the checkpoint's architecture."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
                    attention_impl=self.attention_impl, attention_block_q=self.attention_block_q,
                    attention_block_kv=self.attention_block_kv, layer_loop=self.layer_loop)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for k in ("data", "fsdp", "tensor"):
            if getattr(self, k) < 1:
                raise ConfigError(f"mesh.{k} must be >= 1, got {getattr(self, k)}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Rollout sampling (verl actor_rollout_ref.rollout.*)."""

    n: int = 16  # samples per prompt (the GRPO group size)
    temperature: float = 1.2
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 8192
    max_prompt_tokens: int = 1024  # longer prompts are dropped and counted
    max_batch_tokens: int = 0  # KV-cache budget per sampler call in tokens; 0 = no chunking
    engine: str = "continuous"  # "continuous" (slots refilled as rows finish) or "static"
    decode_slots: int | None = None  # continuous engine: rows decoded at once (None: budget)
    steps_per_sync: int = 16  # continuous engine: decode steps per block between host syncs

    def __post_init__(self):
        check_sampling("sampling", temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, max_new_tokens=self.max_new_tokens, n=self.n)
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"sampling.max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        check_engine_settings(self.engine, self.decode_slots, self.steps_per_sync,
                              self.max_batch_tokens or None, self.max_new_tokens)


ADVANTAGES = ("grpo", "rloo", "reinforce_pp_baseline")
# Where the old (rollout-policy) logprobs of the PPO ratio come from (docs/training.md):
# a no-gradient forward pass of the trainer, or the sampler's own per-token logprobs.
OLD_LOGPROBS = ("recompute", "sampler")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """The GRPO / ProRL objective and batch layout (defaults: ProRL v1, docs/recipe.md)."""

    advantage: str = "grpo"
    norm_adv_by_std: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.4
    clip_c: float | None = 3.0
    kl_coef: float = 1e-4
    kl_kind: str = "low_var_kl"
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    prompts_per_step: int = 256
    mini_batch_prompts: int = 64
    micro_batches: int = 1  # gradient-accumulation steps per mini-batch (padded layout)
    # Packed layout: prompt + response of each kept rollout packed into rows (no padding
    # to the cap); a micro-batch holds at most micro_batch_tokens tokens per device.
    pack_sequences: bool = True
    micro_batch_tokens: int = 0  # 0 = the padded micro-batch's tokens per device
    ppo_epochs: int = 1
    dynamic_sampling: bool = True
    max_gen_batches: int = 4
    on_max_gen_batches: str = "error"  # "error" | "train" (train on the groups kept so far)
    overlong_buffer: int = 0  # DAPO soft overlong punishment; 0 = off
    overlong_factor: float = 1.0
    nontermination_penalty: float | None = None  # reward given to responses without EOS
    # > 0: the reward is 1 where the verifier's score >= this, else 0 (partial credit off:
    # e.g. Reasoning Gym's per-letter credit, which a policy can farm without solving).
    success_threshold: float = 0.0
    # Stop after this many consecutive steps in which every generated group got identical
    # rewards (nothing to learn from: zero advantages); 0 = never stop, only warn.
    max_empty_steps: int = 5
    # "recompute": a forward pass of the trainer gives the old logprobs (the reference);
    # "sampler": the rollout's own logprobs are used and that pass is skipped.
    old_logprobs: str = "recompute"
    # Truncated importance sampling: each token's policy-gradient term is weighted by
    # min(exp(old_logprob - sampler_logprob), tis_cap); 0 / null = off.
    tis_cap: float | None = None

    def __post_init__(self):
        if not 0 <= self.success_threshold <= 1:
            raise ConfigError(f"rl.success_threshold must be in [0, 1] (0 = off), got "
                              f"{self.success_threshold}")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ConfigError(f"rl.old_logprobs must be one of {OLD_LOGPROBS}, got "
                              f"{self.old_logprobs!r}")
        if self.tis_cap is not None and self.tis_cap < 0:
            raise ConfigError(f"rl.tis_cap must be > 0 (or 0 / null = off), got {self.tis_cap}")
        if self.tis_cap and self.old_logprobs != "recompute":
            raise ConfigError("rl.tis_cap needs rl.old_logprobs: recompute (the weight compares "
                              "the trainer's old logprobs with the sampler's)")
        if self.advantage not in ADVANTAGES:
            raise ConfigError(f"rl.advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if self.loss_agg not in AGG_MODES:
            raise ConfigError(f"rl.loss_agg must be one of {AGG_MODES}, got {self.loss_agg!r}")
        if self.kl_kind not in KL_KINDS:
            raise ConfigError(f"rl.kl_kind must be one of {KL_KINDS}, got {self.kl_kind!r}")
        if not (0 <= self.clip_low < 1) or self.clip_high < 0:
            raise ConfigError("rl.clip_low must be in [0, 1) and rl.clip_high >= 0")
        if self.kl_coef < 0:
            raise ConfigError(f"rl.kl_coef must be >= 0 (0 = no KL term), got {self.kl_coef}")
        if self.max_empty_steps < 0:
            raise ConfigError(f"rl.max_empty_steps must be >= 0, got {self.max_empty_steps}")
        if self.clip_c is not None and self.clip_c <= 1:
            raise ConfigError(f"rl.clip_c must be > 1 or null, got {self.clip_c}")
        if self.prompts_per_step < 1 or self.mini_batch_prompts < 1:
            raise ConfigError("rl.prompts_per_step and rl.mini_batch_prompts must be >= 1")
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ConfigError(
                f"rl.prompts_per_step ({self.prompts_per_step}) must be divisible by "
                f"rl.mini_batch_prompts ({self.mini_batch_prompts})")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"rl.micro_batch_tokens must be >= 0 (0 = auto), got "
                              f"{self.micro_batch_tokens}")
        if self.micro_batches < 1 or self.ppo_epochs < 1 or self.max_gen_batches < 1:
            raise ConfigError("rl.micro_batches, rl.ppo_epochs and rl.max_gen_batches must be >= 1")
        if self.on_max_gen_batches not in ("error", "train"):
            raise ConfigError(
                f"rl.on_max_gen_batches must be 'error' or 'train', got {self.on_max_gen_batches!r}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping (verl defaults for what the paper leaves unstated)."""

    lr: float = 2e-6
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ConfigError("optim.b1 and optim.b2 must be in [0, 1)")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("optim.warmup_steps, weight_decay and grad_clip must be >= 0")


@dataclasses.dataclass(frozen=True)
class ReferenceResetConfig:
    """ProRL's hard reset of the reference policy (and optionally the optimizer)."""

    every_steps: int = 0  # 0 = no scheduled resets
    kl_fraction: float = 0.0  # reset when kl_coef*KL > kl_fraction*|policy loss| ...; 0 = off
    kl_patience: int = 3  # ... for this many consecutive steps
    val_patience: int = 0  # reset when validation reward has not improved for k evals; 0 = off
    reset_optimizer: bool = True  # True: ProRL v1; False: ProRL v2

    def __post_init__(self):
        if self.every_steps < 0 or self.kl_fraction < 0 or self.val_patience < 0:
            raise ConfigError("reference_reset values must be >= 0")
        if self.kl_patience < 1:
            raise ConfigError(f"reference_reset.kl_patience must be >= 1, got {self.kl_patience}")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One data source of the training mixture (docs/data.md)."""

    kind: str = "jsonl"  # jsonl | json | parquet | verl | reasoning_gym
    path: str | None = None  # a file, a directory or a glob pattern
    weight: float = 1.0  # relative share of the mixture (normalized over sources)
    domain: str | None = None  # default domain for records that do not name one
    tasks: tuple[str, ...] = ()  # reasoning_gym task names
    task_config: dict = dataclasses.field(default_factory=dict)  # per-task kwargs
    size: int = 1000  # reasoning_gym: entries per task
    domain_map: dict = dataclasses.field(default_factory=dict)  # verl data_source/ability -> domain
    name: str | None = None  # shown in logs and record ids; default from path or kind
    seed: int = 0  # reasoning_gym: generation seed (use different seeds for train and val)
    limit: int = 0  # keep only the first `limit` records; 0 = all

    def __post_init__(self):
        from prorl_jax.data.records import DOMAINS  # lazy: data imports this module

        kinds = ("jsonl", "json", "parquet", "verl", "reasoning_gym")
        if self.kind not in kinds:
            raise ConfigError(f"data.sources[].kind must be one of {kinds}, got {self.kind!r}")
        if self.weight <= 0:
            raise ConfigError(f"data.sources[].weight must be > 0, got {self.weight}")
        if self.kind != "reasoning_gym" and not self.path:
            raise ConfigError(f"data.sources[].path is required for kind {self.kind!r}")
        if self.kind == "reasoning_gym" and not self.tasks:
            raise ConfigError("data.sources[].tasks is required for kind 'reasoning_gym'")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ConfigError(f"data.sources[].domain must be one of {DOMAINS}, got {self.domain!r}")
        for key, dom in self.domain_map.items():
            if dom not in DOMAINS:
                raise ConfigError(f"data.sources[].domain_map[{key!r}] must be one of {DOMAINS}, "
                                  f"got {dom!r}")
        for task, kwargs in self.task_config.items():
            if task not in self.tasks:
                raise ConfigError(f"data.sources[].task_config names {task!r}, which is not in tasks")
            if not isinstance(kwargs, dict):
                raise ConfigError(f"data.sources[].task_config[{task!r}] must be a mapping")
        if self.size < 1 or self.limit < 0 or self.seed < 0:
            raise ConfigError("data.sources[].size must be >= 1, limit >= 0 and seed >= 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = ()
    val_sources: tuple[SourceConfig, ...] = ()  # held-out prompts for validation
    seed: int = 0  # mixture shuffling
    on_bad_record: str = "error"  # "error" | "skip" (skip and count)
    suffixes: dict = dataclasses.field(default_factory=dict)  # domain -> instruction suffix
    use_chat_template: bool = True  # False: plain text + suffix, even if the tokenizer has one
    # Drop training records whose prompt text is a validation prompt (held-out stays held out).
    exclude_val_prompts: bool = True

    def __post_init__(self):
        from prorl_jax.data.records import DOMAINS  # lazy: data imports this module

        if self.on_bad_record not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        if self.seed < 0:
            raise ConfigError(f"data.seed must be >= 0, got {self.seed}")
        for dom, text in self.suffixes.items():
            if dom not in DOMAINS:
                raise ConfigError(f"data.suffixes: unknown domain {dom!r} (known: {DOMAINS})")
            if not isinstance(text, str):
                raise ConfigError(f"data.suffixes[{dom!r}] must be a string, got {text!r}")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    num_workers: int = 2
    timeout_s: float = 10.0  # per item, for any verifier
    code_timeout_s: float = 5.0  # all test cases of one program together

    def __post_init__(self):
        if self.num_workers < 1 or self.timeout_s <= 0 or self.code_timeout_s <= 0:
            raise ConfigError("rewards.num_workers, timeout_s and code_timeout_s must be positive")


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Held-out pass@1 during training, at the evaluation sampling settings."""

    every_steps: int = 0  # 0 = off
    num_prompts: int = 64
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192

    def __post_init__(self):
        if self.every_steps < 0 or self.num_prompts < 1:
            raise ConfigError("validation.every_steps >= 0 and num_prompts >= 1 required")
        check_sampling("validation", temperature=self.temperature, top_p=self.top_p,
                       max_new_tokens=self.max_new_tokens, n=self.n)


@dataclasses.dataclass(frozen=True)
class BoundaryConfig:
    """The reasoning-boundary report (rl/boundary.py): the base and the final policy sampled
    n times on the first `num_prompts` held-out prompts (data.val_sources), pass@k for
    k = 1 ... n, per-prompt verdicts, written to RUN_DIR/boundary/."""

    num_prompts: int = 0  # 0 = off; like validation, nothing without data.val_sources
    n: int = 64
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192

    def __post_init__(self):
        if self.num_prompts < 0:
            raise ConfigError(f"boundary.num_prompts must be >= 0, got {self.num_prompts}")
        check_sampling("boundary", temperature=self.temperature, top_p=self.top_p,
                       max_new_tokens=self.max_new_tokens, n=self.n)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 50  # 0 = only at the end and on signals
    keep_last: int = 3
    async_save: bool = True
    export_hf: bool = True  # write the final policy to RUN_DIR/hf

    def __post_init__(self):
        if self.every_steps < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.every_steps must be >= 0 and checkpoint.keep_last >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "prorl-jax"
    progress: bool = True  # console progress bar


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    steps: int = 2000
    seed: int = 0
    model: ModelSection = ModelSection()
    mesh: MeshConfig = MeshConfig()
    sampling: SamplingConfig = SamplingConfig()
    rl: RLConfig = RLConfig()
    optim: OptimConfig = OptimConfig()
    reference_reset: ReferenceResetConfig = ReferenceResetConfig()
    data: DataConfig = DataConfig()
    rewards: RewardConfig = RewardConfig()
    validation: ValidationConfig = ValidationConfig()
    boundary: BoundaryConfig = BoundaryConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        rows = self.rl.mini_batch_prompts * self.sampling.n
        if rows % self.rl.micro_batches:
            raise ConfigError(
                f"rl.micro_batches ({self.rl.micro_batches}) must divide the mini-batch of "
                f"rl.mini_batch_prompts x sampling.n = {rows} sequences")
        if self.sampling.n < 2:
            raise ConfigError(f"sampling.n must be >= 2, got {self.sampling.n}: GRPO compares "
                              f"the n samples of each prompt (a group of one has no advantage)")
        longest = self.sampling.max_prompt_tokens + self.sampling.max_new_tokens
        if self.rl.pack_sequences and 0 < self.rl.micro_batch_tokens < longest:
            raise ConfigError(
                f"rl.micro_batch_tokens ({self.rl.micro_batch_tokens}) is smaller than the "
                f"longest sequence a step can hold, sampling.max_prompt_tokens + "
                f"sampling.max_new_tokens = {longest}")


# ----------------------------------------------------------------------------- loading


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`, converting where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=key)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def build(cls: type, data: dict, prefix: str = ""):
    """Builds dataclass `cls` from a nested dict, naming the dotted key of any error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise ConfigError(f"unknown key '{key}' (valid: {', '.join(sorted(fields))})")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        if prefix and not msg.startswith(prefix.split(".")[0]) and not msg.startswith("unknown"):
            msg = f"{prefix}: {msg}"
        raise ConfigError(msg) from None


def to_dict(cfg) -> dict:
    """Plain nested dict of a config (tuples as lists), e.g. for YAML dumps and metrics."""
    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple | list):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'rl.kl_coef=1e-3' -> (['rl', 'kl_coef'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def merge(base: Any, value: Any) -> Any:
    """`value` over `base`: mappings merge key by key (recursively), anything else replaces."""
    if isinstance(base, dict) and isinstance(value, dict):
        out = dict(base)
        for k, v in value.items():
            out[k] = merge(base.get(k), v)
        return out
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `--set` overrides in order. A mapping value merges into the section it names
    (`--set 'rl={kl_coef: 0.1}'` changes only rl.kl_coef); lists and scalars replace."""
    data = dict(data or {})
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = merge(node.get(parts[-1]), value)
    return data


def _check_override_key(cls: type, parts: list[str], text: str) -> None:
    """Raises ConfigError naming the override when `parts` is not a key of `cls`."""
    tp = cls
    for depth, part in enumerate(parts):
        if tp is dict or typing.get_origin(tp) is dict:
            return  # a free-form mapping (e.g. data.suffixes.<domain>)
        key = ".".join(parts[:depth + 1])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"--set {text}: '{'.'.join(parts[:depth])}' is not a section, "
                              f"so '{key}' is not a key")
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        if part not in fields:
            raise ConfigError(f"--set {text}: unknown key '{key}' "
                              f"(valid: {', '.join(sorted(fields))})")
        tp = typing.get_type_hints(tp)[part]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None -> X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))


def load_yaml(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] = (),
                cls: type = TrainConfig):
    """Loads a YAML file (None: the defaults), applies --set overrides, validates.

    Errors name the dotted key and where it came from: `configs/x.yaml: unknown key
    'rl.foo'`, or `--set rl.foo=1: unknown key 'rl.foo'` for a key given on the command line.
    """
    data = load_yaml(path) if path is not None else {}
    given = {}  # dotted key -> the override text that set it
    for text in overrides:
        parts, _ = parse_override(text)
        _check_override_key(cls, parts, text)
        given[".".join(parts)] = text
    data = apply_overrides(data, list(overrides))
    try:
        return build(cls, data)
    except ConfigError as e:
        msg = str(e)
        # Value errors start with the dotted key they concern.
        culprit = next((t for k, t in given.items() if re.match(re.escape(k) + r"\b", msg)), None)
        where = (f"--set {culprit}" if culprit is not None
                 else str(path) if path is not None else "--set")
        raise ConfigError(f"{where}: {msg}") from None


def resolve_config_path(name: str | None) -> pathlib.Path:
    """A path as given, or the name of a shipped config ('demo' -> prorl_jax/configs/demo.yaml)."""
    if name is None:
        name = "demo"
    p = pathlib.Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name} (shipped configs: {shipped or 'none'})")
