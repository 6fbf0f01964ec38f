"""Greedy generate == transformers' generate(do_sample=False) on tiny random checkpoints."""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

import prorl_jax as pj

NEW = 40
PROMPTS = [[17, 3, 99, 42, 8], [5], list(range(30, 52)), [120, 7, 64]]  # ragged, 1..22 tokens
PAD = 0


def _checkpoint(arch: str, path) -> torch.nn.Module:
    common = dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  # Wider init than the 0.02 default: a random model's logits are then not
                  # near-uniform, so greedy picks are decided by margins far above fp32 noise.
                  initializer_range=0.15, attn_implementation="eager")
    torch.manual_seed(0)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=24, tie_word_embeddings=True))
    model.generation_config.eos_token_id = None  # no early stop: compare all NEW tokens
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_greedy_matches_transformers(tmp_path, arch):
    model = _checkpoint(arch, tmp_path)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=NEW, min_new_tokens=NEW, output_scores=True,
                             return_dict_in_generate=True)
    ref_tokens = ref.sequences[:, width:].numpy()
    ref_logp = torch.log_softmax(torch.stack(ref.scores, 1).float(), -1)  # [B, NEW, V]
    ref_logp = torch.gather(ref_logp, 2, ref.sequences[:, width:, None])[..., 0].numpy()

    cfg, params = pj.load_hf(str(tmp_path))
    assert cfg.model_type == arch
    out = pj.generate(cfg, params, PROMPTS, pj.SamplingParams(temperature=0, max_new_tokens=NEW))
    np.testing.assert_array_equal(out.tokens, ref_tokens)
    np.testing.assert_allclose(out.logprobs, ref_logp, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out.lengths, NEW)
