"""load_hf / save_hf: round trips, dtypes, sharded files, tokenizer copy, and every error."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors import safe_open

from prorl_jax.errors import CheckpointError
from prorl_jax.model import hf, qwen
from prorl_jax.sharding import make_mesh

SMALL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
             vocab_size=80)
TOKENS = np.array([[3, 14, 15, 9, 26, 5], [35, 8, 9, 7, 9, 3]])
_VOLATILE = {"transformers_version", "_name_or_path"}


def _tensors(path):
    """name -> numpy (float views of bf16 via torch) of every tensor in a checkpoint dir."""
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), framework="pt") as st:
                for k in st.keys():
                    assert k not in out, f"duplicate {k}"
                    t = st.get_tensor(k)
                    out[k] = (str(t.dtype), t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy())
    return out


def _auto_config(path):
    from transformers import AutoConfig
    d = AutoConfig.from_pretrained(path).to_dict()
    return {k: v for k, v in d.items() if k not in _VOLATILE}


def _auto_model(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def qwen2_dir(hf_checkpoint):
    return hf_checkpoint("qwen2", **SMALL)


@pytest.mark.parametrize("model_type,extra", [("qwen2", {}),
                                              ("qwen3", dict(head_dim=10, tie_word_embeddings=True))])
def test_round_trip_is_bit_identical(model_type, extra, hf_checkpoint, hf_logits, tmp_path):
    src, model = hf_checkpoint(model_type, seed=3, **{**SMALL, **extra})
    cfg, params = hf.load_hf(src)
    out = str(tmp_path / "out")
    hf.save_hf(out, cfg, params)
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k][0] == b[k][0], k
        np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=k)
    assert _auto_config(out) == _auto_config(src)
    np.testing.assert_array_equal(hf_logits(_auto_model(out), TOKENS), hf_logits(model, TOKENS))
    assert json.load(open(os.path.join(out, "generation_config.json"))) == {
        "bos_token_id": 1, "eos_token_id": 2}


def test_bf16_checkpoint_loads_exactly_and_saves_sharded(hf_model, tmp_path):
    model = hf_model("qwen2", seed=4, **SMALL).to(torch.bfloat16)
    src = str(tmp_path / "bf16")
    model.save_pretrained(src, max_shard_size="20KB")  # transformers' own sharded layout
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
    cfg, params = hf.load_hf(src)
    assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
    q = params["layers"]["attn"]["q"]["kernel"]
    assert q.dtype == jax.numpy.bfloat16
    ref = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [N*H, D]
    np.testing.assert_array_equal(np.asarray(q[1], np.float32), ref.T.reshape(32, 4, 8))

    cfg32, params32 = hf.load_hf(src, dtype="float32")
    assert cfg32.param_dtype == "float32"
    np.testing.assert_array_equal(params32["layers"]["attn"]["q"]["kernel"][1], ref.T.reshape(32, 4, 8))

    out = str(tmp_path / "out")
    hf.save_hf(out, cfg, params, max_shard_bytes=12_000)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all(os.path.getsize(os.path.join(out, f)) <= 12_000 + 4096 for f in files)
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b) and all(a[k][0] == b[k][0] == "torch.bfloat16" for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=k)
    reloaded = _auto_model(out)
    assert reloaded.dtype == torch.bfloat16
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"


def test_fp16_tensors_and_top_level_rope_theta(hf_model, hf_logits, tmp_path):
    """A Qwen2.5-style config.json (rope_theta at top level, torch_dtype) with fp16 tensors."""
    model = hf_model("qwen2", seed=5, rope_theta=1e6, **SMALL)
    src = str(tmp_path / "fp16")
    model.to(torch.float16).save_pretrained(src)
    conf = json.load(open(os.path.join(src, "config.json")))
    conf.pop("rope_parameters")
    conf.pop("dtype", None)
    conf.update(rope_theta=1000000.0, torch_dtype="float16", use_sliding_window=False,
                sliding_window=131072, max_window_layers=21)
    json.dump(conf, open(os.path.join(src, "config.json"), "w"))
    cfg, params = hf.load_hf(src, dtype="float32")
    assert cfg.rope_theta == 1e6 and cfg.param_dtype == "float32"
    model = model.float()  # the fp16-rounded weights, in float32
    ours = np.asarray(qwen.forward(cfg, params, TOKENS))
    assert np.abs(ours - hf_logits(model, TOKENS)).max() <= 1e-4


def test_load_with_mesh_puts_tensors_in_their_shardings(qwen2_dir):
    path, _ = qwen2_dir
    cfg, ref = hf.load_hf(path)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    cfg2, params = hf.load_hf(path, mesh=mesh)
    assert cfg2 == cfg
    q = params["layers"]["attn"]["q"]["kernel"]  # [L, D, N, H] -> (None, fsdp, tensor, None)
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(qwen.forward(cfg, params, TOKENS), qwen.forward(cfg, ref, TOKENS),
                               atol=1e-5, rtol=0)


def test_tokenizer_is_copied_and_loads(qwen2_dir, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # A tiny byte-level BPE like Qwen's: transformers picks Qwen2Tokenizer for a qwen2 dir.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the model thinks step by step"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    tok_dir = str(tmp_path / "tok")
    fast.save_pretrained(tok_dir)
    path, _ = qwen2_dir
    cfg, params = hf.load_hf(path)
    out = str(tmp_path / "out")
    hf.save_hf(out, cfg, params, tokenizer_dir=tok_dir)
    loaded = AutoTokenizer.from_pretrained(out)
    ids = loaded("hello world")["input_ids"]
    assert ids == fast("hello world")["input_ids"] and len(ids) >= 1
    assert loaded.decode(ids) == "hello world"


# ----------------------------------------------------------------------------- errors


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    conf = json.load(open(file))
    for k, v in changes.items():
        if v is None:
            conf.pop(k, None)
        else:
            conf[k] = v
    json.dump(conf, open(file, "w"))


def _edit_tensors(path, fn):
    file = os.path.join(path, "model.safetensors")
    tensors = dict(safetensors.numpy.load_file(file))
    fn(tensors)
    safetensors.numpy.save_file(tensors, file)


@pytest.mark.parametrize("change,message", [
    (dict(model_type="qwen2_moe"), "model_type 'qwen2_moe' is not supported"),
    (dict(use_sliding_window=True), "use_sliding_window=true is not supported"),
    (dict(rope_parameters={"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}),
     "rope_parameters.rope_type 'yarn' is not supported"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling type 'linear' is not supported"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(num_attention_heads=5), "num_attention_heads (5) must be divisible"),
])
def test_unsupported_config_fields_name_the_field(qwen2_dir, tmp_path, change, message):
    path = _copy(qwen2_dir[0], tmp_path / "c")
    _edit_config(path, **change)
    with pytest.raises(CheckpointError, match="config.json") as e:
        hf.load_hf(path)
    assert message in str(e.value)


def test_missing_directory_and_config(qwen2_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        hf.load_hf(str(tmp_path / "nope"))
    path = _copy(qwen2_dir[0], tmp_path / "c")
    os.remove(os.path.join(path, "config.json"))
    with pytest.raises(CheckpointError, match="config.json is missing"):
        hf.load_hf(path)
    open(os.path.join(path, "config.json"), "w").write("{not json")
    with pytest.raises(CheckpointError, match="config.json: invalid JSON"):
        hf.load_hf(path)


def test_missing_or_corrupt_safetensors(qwen2_dir, tmp_path):
    path = _copy(qwen2_dir[0], tmp_path / "c")
    file = os.path.join(path, "model.safetensors")
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) // 2])  # truncated download
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor .*\(corrupt or truncated\)"):
        hf.load_hf(path)
    open(file, "wb").write(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        hf.load_hf(path)
    os.remove(file)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        hf.load_hf(path)


def test_missing_unmapped_misshaped_tensors_are_named(qwen2_dir, tmp_path):
    src = qwen2_dir[0]
    path = _copy(src, tmp_path / "missing")
    _edit_tensors(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj\.bias"):
        hf.load_hf(path)

    path = _copy(src, tmp_path / "extra")
    _edit_tensors(path, lambda t: t.update({"model.layers.0.mlp.extra_proj.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unmapped tensor model\.layers\.0\.mlp\.extra_proj\.weight"):
        hf.load_hf(path)

    path = _copy(src, tmp_path / "shape")
    _edit_tensors(path, lambda t: t.update({"model.norm.weight": np.ones((31,), np.float32)}))
    with pytest.raises(CheckpointError, match=r"tensor model\.norm\.weight has shape \(31,\), expected \(32,\)"):
        hf.load_hf(path)

    path = _copy(src, tmp_path / "dtype")
    _edit_tensors(path, lambda t: t.update({"model.norm.weight": np.ones((32,), np.int64)}))
    with pytest.raises(CheckpointError, match="tensor model.norm.weight has dtype I64"):
        hf.load_hf(path)


def test_duplicate_tensor_across_shards_and_bad_index(qwen2_dir, tmp_path):
    path = _copy(qwen2_dir[0], tmp_path / "dup")
    file = os.path.join(path, "model.safetensors")
    tensors = dict(safetensors.numpy.load_file(file))
    os.remove(file)
    names = sorted(tensors)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    safetensors.numpy.save_file({k: tensors[k] for k in first}, os.path.join(path, "a.safetensors"))
    safetensors.numpy.save_file({k: tensors[k] for k in second + [first[0]]},
                                os.path.join(path, "b.safetensors"))
    weight_map = {**dict.fromkeys(first, "a.safetensors"), **dict.fromkeys(second, "b.safetensors")}
    json.dump({"weight_map": weight_map}, open(os.path.join(path, "model.safetensors.index.json"), "w"))
    with pytest.raises(CheckpointError, match=f"duplicate tensor {first[0]} in a.safetensors and b.safetensors"):
        hf.load_hf(path)
    safetensors.numpy.save_file({k: tensors[k] for k in second}, os.path.join(path, "b.safetensors"))
    hf.load_hf(path)  # the repaired sharded checkpoint loads
    os.remove(os.path.join(path, "b.safetensors"))
    with pytest.raises(CheckpointError, match="b.safetensors: shard listed in the index is missing"):
        hf.load_hf(path)


def test_save_errors_name_the_problem(qwen2_dir, tmp_path):
    cfg, params = hf.load_hf(qwen2_dir[0])
    del params["layers"]["mlp"]["up"]
    with pytest.raises(CheckpointError, match="params lack layers/mlp/up/kernel needed for tensor "
                                              r"model\.layers\.0\.mlp\.up_proj\.weight"):
        hf.save_hf(str(tmp_path / "o"), cfg, params)
    _, params = hf.load_hf(qwen2_dir[0])
    with pytest.raises(CheckpointError, match="tokenizer directory .* does not exist"):
        hf.save_hf(str(tmp_path / "o"), cfg, params, tokenizer_dir=str(tmp_path / "nope"))
