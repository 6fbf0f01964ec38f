"""Logits parity with transformers' PyTorch Qwen2ForCausalLM / Qwen3ForCausalLM."""

import numpy as np
import pytest

from prorl_jax.model import hf, qwen

# (model_type, config overrides): GQA ratios 1, 2, 3, 4; tied and untied; theta 1e4 / 1e6;
# non-power-of-two sizes; Qwen3 head_dim unrelated to hidden_size / heads.
CASES = {
    "qwen2-mha-untied-1e4": ("qwen2", dict(hidden_size=32, num_attention_heads=4,
                                           num_key_value_heads=4, rope_theta=1e4)),
    "qwen2-gqa2-tied-1e6": ("qwen2", dict(hidden_size=36, num_attention_heads=6,
                                          num_key_value_heads=3, tie_word_embeddings=True,
                                          rope_theta=1e6)),
    "qwen2-gqa4-untied-1e6": ("qwen2", dict(hidden_size=48, num_attention_heads=8,
                                            num_key_value_heads=2, intermediate_size=70,
                                            rope_theta=1e6)),
    "qwen3-gqa3-headdim10-tied": ("qwen3", dict(hidden_size=36, num_attention_heads=6,
                                                num_key_value_heads=2, head_dim=10,
                                                tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3-mha-headdim14-untied": ("qwen3", dict(hidden_size=40, num_attention_heads=2,
                                                 num_key_value_heads=2, head_dim=14,
                                                 rope_theta=1e4)),
}

ROWS = [[5, 17, 33, 2, 90, 61, 8], [44, 3, 71, 12], [9, 96, 25, 30, 7, 50]]


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_incl_left_padded_rows(case, hf_checkpoint, hf_logits):
    model_type, overrides = CASES[case]
    path, model = hf_checkpoint(model_type, **overrides)
    cfg, params = hf.load_hf(path)
    assert cfg.model_type == model_type and cfg.dtype == "float32"
    assert cfg.rope_theta == overrides["rope_theta"]

    T = max(map(len, ROWS))
    tokens = np.zeros((len(ROWS), T), np.int32)
    mask = np.zeros((len(ROWS), T), np.int32)
    for i, r in enumerate(ROWS):
        tokens[i, T - len(r):], mask[i, T - len(r):] = r, 1
    ours = np.asarray(qwen.forward(cfg, params, tokens, mask))
    for i, r in enumerate(ROWS):  # row 0 has no padding: plain full-batch parity
        ref = hf_logits(model, [r])[0]
        err = np.abs(ours[i, T - len(r):] - ref).max()
        assert err <= 1e-4, f"{case} row {i}: max abs logits error {err}"
