"""prorl_jax: ProRL (prolonged GRPO RL) for Qwen-family models in JAX/Flax.

Public API (imported lazily so that `prorl-jax --help` and `import prorl_jax` stay fast):

    import prorl_jax as pj
    cfg, params = pj.load_hf(path, dtype=None, mesh=None)
    pj.save_hf(path, cfg, params, tokenizer_dir=None)
    logits = pj.forward(cfg, params, tokens, attention_mask=None)
    mesh = pj.make_mesh(data=1, fsdp=1, tensor=1)
    out = pj.generate(cfg, params, prompts, pj.SamplingParams(...), seed=0)
    from prorl_jax import losses, rewards
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "prorl_jax.model.config",
    "forward": "prorl_jax.model.qwen",
    "init_params": "prorl_jax.model.qwen",
    "init_cache": "prorl_jax.model.qwen",
    "KVCache": "prorl_jax.model.qwen",
    "load_hf": "prorl_jax.model.hf",
    "save_hf": "prorl_jax.model.hf",
    "make_mesh": "prorl_jax.sharding",
    "SamplingParams": "prorl_jax.sampling",
    "GenerationOutput": "prorl_jax.sampling",
    "generate": "prorl_jax.sampling",
    "TrainConfig": "prorl_jax.config",
    "load_config": "prorl_jax.config",
    "pass_at_k": "prorl_jax.eval",
}
_SUBMODULES = {"losses": "prorl_jax.rl.losses", "rewards": "prorl_jax.rewards",
               "data": "prorl_jax.data", "eval": "prorl_jax.eval",
               "sharding": "prorl_jax.sharding", "config": "prorl_jax.config"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'prorl_jax' has no attribute {name!r}")


def __dir__():
    return __all__
