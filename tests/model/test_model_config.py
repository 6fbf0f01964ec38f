"""ModelConfig <-> Hugging Face config, presets and parameter counts."""

import pytest
import torch

from prorl_jax.errors import ConfigError
from prorl_jax.model.config import PRESETS, ModelConfig


def _transformers_model(cfg: ModelConfig):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = cfg.to_hf_config()
    conf = AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device("meta"):  # shapes only: a 7B model costs no memory
        return AutoModelForCausalLM.from_config(conf)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_num_params_equals_transformers(name):
    cfg = ModelConfig.preset(name)
    assert cfg.num_params() == _transformers_model(cfg).num_parameters()


def test_preset_values_and_known_sizes():
    r1 = ModelConfig.preset("deepseek-r1-distill-qwen-1.5b")
    assert (r1.hidden_size, r1.num_hidden_layers, r1.num_attention_heads, r1.num_key_value_heads,
            r1.head_dim, r1.intermediate_size, r1.vocab_size, r1.rope_theta,
            r1.tie_word_embeddings, r1.attention_bias, r1.bos_token_id, r1.eos_token_id) == (
        1536, 28, 12, 2, 128, 8960, 151936, 10000.0, False, True, 151646, 151643)
    q3 = ModelConfig.preset("qwen3-0.6b")
    assert (q3.head_dim, q3.qk_norm, q3.attention_bias, q3.tie_word_embeddings) == (128, True, False, True)
    # Sizes published on the model cards (Qwen2.5: 0.49B, 7.61B; Qwen3: 0.6B).
    assert ModelConfig.preset("qwen2.5-0.5b").num_params() == 494_032_768
    assert ModelConfig.preset("qwen2.5-7b").num_params() == 7_615_616_512
    assert ModelConfig.preset("qwen3-0.6b").num_params() == 596_049_920
    assert ModelConfig.preset("qwen2.5-1.5b", dtype="float32").dtype == "float32"
    with pytest.raises(ConfigError, match="model.preset 'qwen9' is unknown"):
        ModelConfig.preset("qwen9")


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=2),
    ModelConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=1, head_dim=10, model_type="qwen3",
                attention_bias=False, qk_norm=True, tie_word_embeddings=True),
])
def test_tiny_num_params_and_hf_config_round_trip(cfg):
    assert cfg.num_params() == _transformers_model(cfg).num_parameters()
    assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg


def test_from_hf_config_defaults_and_layouts():
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=40,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    cfg = ModelConfig.from_hf_config({**base, "rope_theta": 1e6, "torch_dtype": "bfloat16",
                                      "eos_token_id": [7, 8], "sliding_window": 4096,
                                      "use_sliding_window": False})
    assert (cfg.rope_theta, cfg.param_dtype, cfg.eos_token_id, cfg.head_dim) == (1e6, "bfloat16", 7, 8)
    cfg = ModelConfig.from_hf_config({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})
    assert (cfg.rope_theta, cfg.param_dtype) == (5e5, "float32")
    q3 = ModelConfig.from_hf_config({**base, "model_type": "qwen3"})
    assert (q3.head_dim, q3.qk_norm, q3.attention_bias) == (128, True, False)  # Qwen3Config defaults
    assert ModelConfig.from_hf_config({**base, "num_key_value_heads": None}).num_key_value_heads == 4


@pytest.mark.parametrize("change,message", [
    (dict(model_type="qwen2_moe"), "model_type 'qwen2_moe' is not supported"),
    (dict(model_type="llama"), "model_type 'llama' is not supported"),
    (dict(use_sliding_window=True), "use_sliding_window=true"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types ['sliding_attention']"),
    (dict(rope_parameters={"rope_theta": 1e6, "rope_type": "llama3"}), "rope_parameters.rope_type 'llama3'"),
    (dict(rope_parameters={"factor": 2.0}), "rope_parameters must be a dict with rope_theta"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic'"),
    (dict(hidden_act="relu"), "hidden_act 'relu'"),
    (dict(model_type="qwen3", attention_bias=True), "attention_bias=true is not supported for qwen3"),
    (dict(torch_dtype="int8"), "dtype 'int8' is not supported"),
    (dict(hidden_size=32.5), "hidden_size must be an integer"),
    (dict(num_key_value_heads=3), "must be divisible by model.num_key_value_heads (3)"),
])
def test_from_hf_config_rejects_unsupported_fields(change, message):
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=40,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_hf_config({**base, **change})
    assert message in str(e.value)


def test_to_hf_config_rejects_combinations_transformers_cannot_express():
    with pytest.raises(ConfigError, match="model_type 'qwen3' with attention_bias=True"):
        ModelConfig(model_type="qwen3").to_hf_config()
    with pytest.raises(ConfigError, match="qk_norm=True has no Hugging Face equivalent"):
        ModelConfig(qk_norm=True).to_hf_config()
