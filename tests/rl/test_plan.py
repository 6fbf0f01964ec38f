"""The dry-run memory plan against XLA's own accounting of the compiled micro-batch update."""

import jax
import jax.numpy as jnp
import optax
import pytest

from prorl_jax.config import RLConfig
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.rl.plan import micro_batch_bytes
from prorl_jax.rl.update import PackedStep

# Not the shape the plan's coefficients were read from (hidden 256, 2 layers, 4 heads).
SHAPE = dict(vocab_size=1024, hidden_size=192, intermediate_size=448, num_hidden_layers=3,
             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=16384)


def _xla_bytes(mc, rows, T):
    params = jax.eval_shape(lambda: qwen.init_params(mc, jax.random.key(0)))
    step = PackedStep(mc, RLConfig(), optax.adamw(1e-3), temperature=1.0)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    micro = {k: i32(rows, T) for k in ("tokens", "segment_ids", "targets", "loss_mask")}
    micro |= {k: f32(rows, T) for k in ("weights", "advantages", "old_logprobs", "ref_logprobs")}
    micro["columns"] = i32(rows, T // 2)  # the lm head on half the columns
    micro["metric_weight"] = f32()
    keys = ("pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "approx_kl", "ratio_mean",
            "ratio_max", "kl", "loss")
    acc = (params, {k: f32() for k in keys})
    ma = step.accumulate.lower(params, acc, micro).compile().memory_analysis()
    return ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes


@pytest.mark.slow  # four compiles of a gradient, ~15-30 s each on a loaded 2-core box
@pytest.mark.parametrize("T,rows,remat,impl", [(1024, 2, "none", "dense"),
                                               (2048, 1, "full", "dense"),
                                               (4096, 1, "none", "blockwise"),
                                               (8192, 1, "full", "blockwise")])
def test_memory_plan_matches_xla_within_25_percent(T, rows, remat, impl):
    mc = ModelConfig(**SHAPE, remat=remat, attention_impl=impl)
    plan = micro_batch_bytes(mc, rows, T, loss_columns=T // 2)
    # Arguments and outputs: params, the gradient accumulator in and out, the micro-batch.
    n = mc.num_params() * 4
    planned = sum(plan.values()) + 3 * n + 8 * 4 * rows * T + 4 * rows * T // 2
    measured = _xla_bytes(mc, rows, T)
    assert abs(planned - measured) <= 0.25 * measured, (planned / 2**20, measured / 2**20, plan)
