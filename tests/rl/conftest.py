"""Fixtures for trainer tests: a tiny random Qwen2 checkpoint with the demo's tokenizer,
and configs that train it on a few Reasoning Gym prompts."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

DEMO_TASK = {"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                  "max_digits": 1, "operators": ["+"],
                                  "allow_parentheses": False, "allow_negation": False}}


def build_tiny_checkpoint(path: pathlib.Path, *, hidden: int = 32, layers: int = 2, seed: int = 0):
    import jax

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import demo_task
    finally:
        sys.path.pop(0)
    from prorl_jax.model import hf, qwen
    from prorl_jax.model.config import ModelConfig

    tok = demo_task.build_tokenizer()
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    hf.save_hf(str(path), cfg, qwen.init_params(cfg, jax.random.key(seed)))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def make_config():
    """make_config(model_dir, **sections) -> TrainConfig (see `tiny_config`)."""
    return tiny_config


def tiny_config(model_dir, **sections):
    """A TrainConfig for the tiny model: 2 prompts x 4 samples, 6 new tokens."""
    from prorl_jax.config import TrainConfig, apply_overrides, build

    data = {
        "steps": 2,
        "model": {"path": str(model_dir)},
        "sampling": {"n": 4, "temperature": 1.0, "max_new_tokens": 6, "max_prompt_tokens": 64},
        "rl": {"prompts_per_step": 2, "mini_batch_prompts": 1, "max_gen_batches": 2,
               "on_max_gen_batches": "train", "kl_coef": 1e-2},
        "optim": {"lr": 1e-2},
        "data": {"suffixes": {"reasoning_gym": "Answer in <answer></answer>."},
                 "sources": [{"kind": "reasoning_gym", "tasks": ["basic_arithmetic"],
                              "size": 50, "task_config": DEMO_TASK}]},
        "rewards": {"num_workers": 1},
        "checkpoint": {"every_steps": 1, "keep_last": 2, "async_save": False,
                       "export_hf": False},
        "logging": {"tensorboard": False, "progress": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return build(TrainConfig, apply_overrides(data, []))
