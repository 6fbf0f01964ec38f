"""Prompt data for ProRL: records, sources, the resumable mixture and chat formatting.

    from prorl_jax import data
    records = data.load_source(source_cfg, on_bad_record="error")   # list[Record]
    it = data.build_iterator(data_cfg, split="train")                # PromptIterator
    batch = it.next_batch(256); state = it.state_dict(); it.load_state_dict(state)
    fmt = data.ChatFormatter(tokenizer, suffixes=None, max_prompt_tokens=1024)
    ids = fmt.encode(record)                                         # None when too long

Names resolve lazily, so the reward workers can import `restore_entry` without loading
`datasets`.
"""

import importlib

_EXPORTS = {
    "DOMAINS": "prorl_jax.data.records",
    "Record": "prorl_jax.data.records",
    "make_record": "prorl_jax.data.records",
    "json_safe": "prorl_jax.data.records",
    "normalize_ground_truth": "prorl_jax.data.records",
    "load_source": "prorl_jax.data.sources",
    "read_source": "prorl_jax.data.sources",
    "SourceData": "prorl_jax.data.sources",
    "verl_row_to_record": "prorl_jax.data.sources",
    "domain_for_verl": "prorl_jax.data.sources",
    "read_rows": "prorl_jax.data.readers",
    "load_reasoning_gym": "prorl_jax.data.reasoning_gym_source",
    "restore_entry": "prorl_jax.data.reasoning_gym_source",
    "PromptIterator": "prorl_jax.data.mixture",
    "build_iterator": "prorl_jax.data.mixture",
    "ChatFormatter": "prorl_jax.data.chat",
    "DEFAULT_SUFFIXES": "prorl_jax.data.chat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prorl_jax.data' has no attribute {name!r}")


def __dir__():
    return __all__
