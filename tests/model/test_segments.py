"""Packed rows: with segment ids, each sequence of a row gives the logits it gives alone."""

import jax
import numpy as np
import pytest

from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig

CFG = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@pytest.mark.parametrize("model_type,impl", [("qwen2", "dense"), ("qwen3", "dense"),
                                             ("qwen2", "blockwise"), ("qwen3", "blockwise")])
def test_packed_row_equals_each_sequence_alone(model_type, impl):
    """Blockwise uses 4-token tiles here, so segments start and end inside tiles."""
    cfg = ModelConfig(model_type=model_type, qk_norm=model_type == "qwen3", **CFG)
    params = qwen.init_params(cfg, jax.random.key(0))
    cfg = cfg.replace(attention_impl=impl, attention_block_q=4, attention_block_kv=4)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 61, n).astype(np.int32) for n in (7, 3, 5)]
    T = 18  # 15 real tokens + 3 padding at the end
    tokens = np.zeros((1, T), np.int32)
    segs = np.zeros((1, T), np.int32)
    start = 0
    for i, s in enumerate(seqs):
        tokens[0, start:start + len(s)] = s
        segs[0, start:start + len(s)] = i + 1
        start += len(s)
    packed = np.asarray(qwen.forward(cfg, params, tokens, segment_ids=segs))
    start = 0
    for s in seqs:
        alone = np.asarray(qwen.forward(cfg.replace(attention_impl="dense"), params, s[None]))[0]
        got = packed[0, start:start + len(s)]
        np.testing.assert_allclose(got, alone, atol=2e-6 * np.abs(alone).max())
        start += len(s)


def test_segment_positions_restart_per_segment():
    segs = np.array([[1, 1, 1, 2, 2, 3, 0, 0]], np.int32)
    np.testing.assert_array_equal(np.asarray(qwen.segment_positions(segs)),
                                  [[0, 1, 2, 0, 1, 0, 0, 1]])
