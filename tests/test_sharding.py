"""Sharding rules, mesh construction, and sharded == single-device on 8 fake CPU devices."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from prorl_jax import sharding
from prorl_jax.errors import ConfigError
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.sharding import SAMPLE_RULES, TRAIN_RULES, logical_to_spec, make_mesh

CFG = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2)
TOKENS = np.random.default_rng(0).integers(0, 128, (8, 6)).astype(np.int32)
MASK = np.ones((8, 6), np.int32)
MASK[1, :2] = MASK[5, :4] = 0  # some left padding


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)  # host random: init_params' PRNG compile is slow on CPU
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype), qwen.param_shapes(CFG))
    return params, np.asarray(qwen.forward(CFG, params, TOKENS, MASK))


def test_make_mesh_axes_and_errors():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert make_mesh().devices.shape == (1, 1, 1)
    with pytest.raises(ConfigError, match="needs 16 devices, but only 8 are available"):
        make_mesh(fsdp=4, tensor=4)
    with pytest.raises(ConfigError, match="mesh.tensor must be a positive integer"):
        make_mesh(tensor=0)


def test_rules_table():
    assert logical_to_spec(("layers", "embed", "q_heads", "head_dim"), TRAIN_RULES) == \
        PartitionSpec(None, "fsdp", "tensor", None)
    assert logical_to_spec(("layers", "embed", "q_heads", "head_dim"), SAMPLE_RULES) == \
        PartitionSpec(None, None, "tensor", None)
    assert logical_to_spec(("batch", "seq"), SAMPLE_RULES) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="logical axis 'heads' has no sharding rule"):
        logical_to_spec(("heads",), TRAIN_RULES)
    with pytest.raises(ValueError, match="mesh axis 'tensor' is used twice in one array: by logical "
                                         "axes 'q_heads' and 'mlp'"):
        logical_to_spec(("q_heads", "mlp"), TRAIN_RULES)
    with pytest.raises(ValueError, match="mesh axis 'fsdp' is used twice"):
        logical_to_spec(("batch", "embed"), TRAIN_RULES)


def test_uneven_dims_are_replicated_not_crashing():
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    # 6 rows over data*fsdp = 8: keep the longest dividing prefix ('data' alone).
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES, mesh, (6, 5)) == PartitionSpec("data", None)
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES, mesh, (5, 5)) == PartitionSpec(None, None)
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES, mesh, (16, 5)) == \
        PartitionSpec(("data", "fsdp"), None)
    x = sharding.shard_batch(np.arange(30).reshape(6, 5), mesh, TRAIN_RULES, ("batch", "seq"))
    assert x.sharding.spec == PartitionSpec("data", None)
    mesh = make_mesh(tensor=8)
    spec = qwen.param_shardings(CFG, mesh)["layers"]["attn"]["k"]["kernel"].spec
    assert spec == PartitionSpec(None, "fsdp", None, None)  # 2 kv heads do not split 8 ways


def test_init_params_directly_into_shardings():
    cfg = CFG.replace(param_dtype="bfloat16")
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    params = qwen.init_params(cfg, jax.random.key(0), mesh=mesh)
    q = params["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert params["embed"]["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    q = np.asarray(q, np.float32)
    assert abs(q.std() - 0.02) < 0.003  # transformers' initializer_range
    assert (np.asarray(params["final_norm"]["scale"], np.float32) == 1).all()
    assert (np.asarray(params["layers"]["attn"]["k"]["bias"], np.float32) == 0).all()
    single = qwen.init_params(cfg, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
        np.testing.assert_array_equal(a, b)  # sharding does not change the values


@pytest.mark.parametrize("shape,rules", [((2, 2, 2), "train"), ((1, 8, 1), "train"),
                                         ((1, 1, 8), "train"), ((4, 2, 1), "train"),
                                         ((1, 1, 8), "sample")])
def test_sharded_forward_equals_single_device(reference, shape, rules):
    ref_params, ref_logits = reference
    rules = {"train": TRAIN_RULES, "sample": SAMPLE_RULES}[rules]
    mesh = make_mesh(*shape)
    params = jax.device_put(ref_params, qwen.param_shardings(CFG, mesh, rules))
    tokens = sharding.shard_batch(TOKENS, mesh, rules, ("batch", "seq"))
    mask = sharding.shard_batch(MASK, mesh, rules, ("batch", "seq"))
    with sharding.use_rules(mesh, rules):
        logits = qwen.forward(CFG, params, tokens, mask)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)


def test_sharded_cache_decode_equals_single_device(reference):
    ref_params, _ = reference
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    params = jax.device_put(ref_params, qwen.param_shardings(CFG, mesh, SAMPLE_RULES))

    def run(params, cache, ctx):
        outs = []
        with ctx:
            logits, cache = qwen.forward(CFG, params, TOKENS[:, :4], MASK[:, :4], cache=cache)
            outs.append(logits)
            for t in range(4, 6):
                logits, cache = qwen.forward(CFG, params, TOKENS[:, t:t + 1], cache=cache)
                outs.append(logits)
        return np.concatenate(outs, axis=1), cache

    ref, _ = run(ref_params, qwen.init_cache(CFG, 8, 8), contextlib.nullcontext())
    cache = qwen.init_cache(CFG, 8, 8, mesh=mesh)
    assert cache.k.sharding.spec == PartitionSpec(None, ("data", "fsdp"), "tensor", None, None)
    out, cache = run(params, cache, sharding.use_rules(mesh, SAMPLE_RULES))
    assert cache.k.sharding.spec[1] == ("data", "fsdp")
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert jnp.isfinite(out).all()
