"""bf16 compute vs fp32: our error is measured against transformers' own bf16 error.

The numbers in docs/architecture.md come from the same comparison at larger tiny dims.
"""

import jax
import numpy as np
import pytest
import torch

from prorl_jax.model import hf, qwen


@pytest.mark.parametrize("model_type,extra", [("qwen2", {}), ("qwen3", dict(head_dim=32))])
def test_bf16_logits_error_is_no_worse_than_transformers(model_type, extra, hf_checkpoint):
    path, model = hf_checkpoint(model_type, seed=11, vocab_size=256, hidden_size=96,
                                intermediate_size=160, num_attention_heads=6,
                                num_key_value_heads=2, **extra)
    cfg, params = hf.load_hf(path)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 32))
    fp32 = np.asarray(qwen.forward(cfg, params, tokens))

    bf16_cfg = cfg.replace(dtype="bfloat16")
    ours = qwen.forward(bf16_cfg, params, tokens)
    assert ours.dtype == np.float32  # logits are always float32
    ours = np.asarray(ours)
    bf16_params = jax.tree.map(lambda x: x.astype("bfloat16"), params)
    ours_bf16_params = np.asarray(qwen.forward(bf16_cfg.replace(param_dtype="bfloat16"),
                                               bf16_params, tokens))
    with torch.no_grad():
        theirs = model.to(torch.bfloat16)(torch.as_tensor(tokens)).logits.float().numpy()

    err, their_err = np.abs(ours - fp32), np.abs(theirs - fp32)
    assert err.max() > 0  # the bf16 path really computes in bf16
    assert err.max() <= 1.5 * their_err.max() + 1e-3, (err.max(), their_err.max())
    assert err.mean() <= 1.5 * their_err.mean(), (err.mean(), their_err.mean())
    # fp32 params are cast to the compute dtype at each matmul: same result as bf16 params.
    np.testing.assert_array_equal(ours_bf16_params, ours)
