"""Start-up checks of a training run, and the one write of its config.

The trainer calls the checks before it writes anything, so that a mistake that would
otherwise surface at step 1 (or after the base model's validation) is one line at start-up
and leaves no half-made run directory behind.
"""

from __future__ import annotations

import os
import pathlib

import yaml

from prorl_jax.config import TrainConfig, to_dict
from prorl_jax.errors import ConfigError


def check_positions(cfg: TrainConfig, model_cfg) -> None:
    """The longest prompt plus the response budget must fit the model's positions."""
    limit = model_cfg.max_position_embeddings
    budgets = [("sampling.max_new_tokens", cfg.sampling.max_new_tokens)]
    if cfg.data.val_sources:
        budgets.append(("validation.max_new_tokens", cfg.validation.max_new_tokens))
    if cfg.boundary.num_prompts:
        budgets.append(("boundary.max_new_tokens", cfg.boundary.max_new_tokens))
    prompt = cfg.sampling.max_prompt_tokens
    for key, new in budgets:
        if prompt + new > limit:
            raise ConfigError(
                f"sampling.max_prompt_tokens ({prompt}) + {key} ({new}) = {prompt + new} "
                f"exceeds the model's max_position_embeddings ({limit}); lower one of them")


def check_chat_template(formatter, model_dir) -> None:
    """Renders a one-message chat, so a broken template (or a missing jinja2) fails now."""
    if not formatter.use_chat_template:
        return
    try:
        formatter.tokenizer.apply_chat_template([{"role": "user", "content": "1 + 1 = ?"}],
                                                tokenize=False, add_generation_prompt=True)
    except Exception as e:  # ImportError (jinja2), TemplateError, ...: all mean "cannot render"
        raise ConfigError(f"{model_dir}: the tokenizer's chat template cannot be rendered "
                          f"({type(e).__name__}: {e}); set data.use_chat_template=false "
                          f"for plain-text prompts") from None


def write_config(run_dir: str | pathlib.Path, cfg: TrainConfig) -> pathlib.Path:
    """Writes RUN_DIR/config.yaml atomically: a crash mid-write keeps the previous file."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
    return path
