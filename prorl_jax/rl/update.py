"""Jitted pieces of the GRPO update: sequence logprobs and one optimizer step, for the two
layouts of rl/batch.py.

Padded: a training sequence is a left-padded prompt [P] followed by a right-padded response
[R] (T = P + R). The hidden state at position P - 1 + t predicts response token t, so the
response logprobs come from hidden[:, P-1 : P+R-1] and the lm head, computed over sequence
chunks so the [B, R, V] float32 logits never exist at once.

Packed: rows [b, T] of several sequences with segment ids; column c predicts targets[c]
(= tokens[c + 1] where that is a response token). The decoder runs over every column; the
lm head only over the loss columns (a [b, R] index from batch.py, R bucketed), whose
logprobs are laid back at their columns of [b, T] arrays, so the loss needs only the mask. A mini-batch is any number of micro-
batches: `PackedStep.accumulate` adds one micro-batch's gradient (its loss already carries
the mini-batch normaliser in per-token weights), `PackedStep.apply` takes the optimizer step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prorl_jax import losses
from prorl_jax.config import RLConfig
from prorl_jax.model import qwen
from prorl_jax.model.config import ModelConfig
from prorl_jax.rl import old_logprobs
from prorl_jax.sharding import TRAIN_RULES, rules_for


def combines_by_max(name: str) -> bool:
    """Whether metric `name` combines over micro-batches and steps by max (names ending in
    "max", e.g. "ratio_max"); every other metric is a (weighted) mean."""
    return name.endswith("max")


def response_logprobs(cfg: ModelConfig, params, tokens, attention_mask, prompt_len: int,
                      temperature: float, *, with_entropy: bool = False,
                      chunk_size: int = losses.DEFAULT_CHUNK_SIZE):
    """Logprobs (and entropies) of the response tokens under softmax(logits / temperature).

    Args:
      tokens: int32 [B, T] prompt (left-padded to prompt_len) + response (right-padded).
      attention_mask: [B, T] 1 on real prompt and response tokens.
      prompt_len: P, static.
    Returns:
      logp float32 [B, R] (and entropy float32 [B, R] when with_entropy).
    """
    hidden = qwen.forward_hidden(cfg, params, tokens, attention_mask=attention_mask)  # [B, T, D]
    h = hidden[:, prompt_len - 1:-1]  # [B, R, D]
    response = tokens[:, prompt_len:]  # [B, R]
    w = qwen.unembed_matrix(cfg, params)  # [D, V]
    if not with_entropy:
        return losses.token_logprobs_from_hidden(h, w, response, temperature,
                                                 chunk_size=chunk_size)
    return losses.logprobs_and_entropy_from_hidden(h, w, response, temperature,
                                                   chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_len", "temperature", "with_entropy",
                                             "chunk_size", "mesh"))
def batch_logprobs(cfg, params, tokens, attention_mask, *, prompt_len, temperature,
                   with_entropy=False, chunk_size=losses.DEFAULT_CHUNK_SIZE, mesh=None):
    """Jitted `response_logprobs` without gradients: old (with entropy) and reference logprobs.
    mesh: the training mesh (activations sharded by TRAIN_RULES), or None."""
    with rules_for(mesh, TRAIN_RULES):
        return response_logprobs(cfg, params, tokens, attention_mask, prompt_len, temperature,
                                 with_entropy=with_entropy, chunk_size=chunk_size)


def micro_weights(response_mask, micro_batches: int, agg: str):
    """Each micro-batch's share of the mini-batch normaliser (host-side numpy).

    The loss of a micro-batch is a mean over its own tokens (or sequences); weighting
    it by its share of all tokens (sequences) makes the accumulated gradient equal to
    the gradient of the loss over the whole mini-batch.

    Args:
      response_mask: [M, b, R] numpy, M = micro_batches.
    Returns:
      float32 [M], summing to 1 (0 for micro-batches with nothing valid).
    """
    m = np.asarray(response_mask, bool).reshape(micro_batches, -1, response_mask.shape[-1])
    if agg in losses.SEQ_MEAN_MODES:
        counts = m.any(-1).sum(-1).astype(np.float64)
    else:
        counts = m.sum((-2, -1)).astype(np.float64)
    total = counts.sum()
    return (counts / total if total > 0 else counts).astype(np.float32)


def make_train_step(cfg: ModelConfig, rl: RLConfig, optimizer: optax.GradientTransformation, *,
                    prompt_len: int, temperature: float,
                    chunk_size: int = losses.DEFAULT_CHUNK_SIZE, mesh=None):
    """Builds the jitted update `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    mesh: the training mesh: activations are sharded by TRAIN_RULES over it (None: none).

    batch: dict of arrays with a leading micro-batch axis M:
      tokens int32 [M, b, T], attention_mask [M, b, T], response_mask [M, b, R],
      old_logprobs / ref_logprobs float32 [M, b, R], advantages float32 [M, b],
      weight float32 [M] (from `micro_weights`); optionally sampler_logprobs and
      tis_weights [M, b, R] (rl/old_logprobs.py).
    Gradients are accumulated over M in a scan (memory of one micro-batch). A non-finite
    loss or gradient leaves params and optimizer state unchanged; metrics["skipped"] = 1.
    Entropy is computed here only when it is in the loss (entropy_coef != 0); the trainer
    logs the rollout policy's entropy from the no-gradient old-logprobs pass instead.
    """
    want_entropy = rl.entropy_coef != 0.0

    def loss_fn(params, mb):
        out = response_logprobs(cfg, params, mb["tokens"], mb["attention_mask"], prompt_len,
                                temperature, with_entropy=want_entropy, chunk_size=chunk_size)
        logp, ent = out if want_entropy else (out, None)
        loss, metrics = losses.grpo_loss(
            logp, mb["old_logprobs"], mb["ref_logprobs"], mb["advantages"], mb["response_mask"],
            clip_low=rl.clip_low, clip_high=rl.clip_high, clip_c=rl.clip_c,
            kl_coef=rl.kl_coef, kl_kind=rl.kl_kind, entropy=ent,
            entropy_coef=rl.entropy_coef, agg=rl.loss_agg, tis=mb.get("tis_weights"))
        metrics.update(old_logprobs.in_step(rl, logp, mb))
        return loss * mb["weight"], metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, batch):
        with rules_for(mesh, TRAIN_RULES):
            return _step(params, opt_state, batch)

    def _step(params, opt_state, batch):
        def accumulate(carry, mb):
            grads, metrics = carry
            (_, m), g = grad_fn(params, mb)
            grads = jax.tree.map(jnp.add, grads, g)
            # Means combine by the micro-batch weights; maxima by max.
            metrics = {k: (jnp.maximum(metrics[k], v) if combines_by_max(k)
                           else metrics[k] + mb["weight"] * v) for k, v in m.items()}
            return (grads, metrics), None

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda x: x[0], batch)
        zero_metrics = {k: (jnp.full(v.shape, -jnp.inf, v.dtype) if combines_by_max(k)
                            else jnp.zeros(v.shape, v.dtype))
                        for k, v in jax.eval_shape(loss_fn, params, first)[1].items()}
        (grads, metrics), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), batch)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {**metrics, "grad_norm": grad_norm,
                   "skipped": (~finite).astype(jnp.float32)}
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    return jax.jit(step, donate_argnums=(0, 1))


# ----------------------------------------------------------------------------- packed rows


def packed_logprobs(cfg: ModelConfig, params, tokens, segment_ids, targets, temperature: float,
                    *, columns=None, with_entropy: bool = False,
                    chunk_size: int = losses.DEFAULT_CHUNK_SIZE):
    """Next-token logprobs (and entropies) of packed rows under softmax(logits / temperature).

    Args:
      tokens: int32 [b, T] packed sequences; segment_ids int32 [b, T] (0 = padding).
      targets: int32 [b, T] the token each column predicts (anything where unused).
      columns: int32 [b, R] the loss columns of each row, -1 = none (batch.py), or None
        for every column. The lm head (the [*, V] logits) runs on those R columns only:
        prompt and padding columns cost the decoder, not the head.
    Returns:
      logp float32 [b, T] (and entropy float32 [b, T] when with_entropy), 0 off `columns`
      when they are given.
    """
    hidden = qwen.forward_hidden(cfg, params, tokens, segment_ids=segment_ids)  # [b, T, D]
    w = qwen.unembed_matrix(cfg, params)  # [D, V]
    if columns is not None:
        valid = columns >= 0  # [b, R]
        idx = jnp.where(valid, columns, 0)
        hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)  # [b, R, D]
        targets = jnp.take_along_axis(targets, idx, axis=1)  # [b, R]
    if with_entropy:
        outs = losses.logprobs_and_entropy_from_hidden(hidden, w, targets, temperature,
                                                       chunk_size=chunk_size)
    else:
        outs = (losses.token_logprobs_from_hidden(hidden, w, targets, temperature,
                                                  chunk_size=chunk_size),)
    if columns is not None:
        # Back to [b, T] at the loss columns; the -1 entries add 0 (to column 0).
        rows = jnp.arange(tokens.shape[0])[:, None]
        outs = tuple(jnp.zeros(tokens.shape, o.dtype).at[rows, idx].add(jnp.where(valid, o, 0))
                     for o in outs)
    return outs if with_entropy else outs[0]


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "with_entropy", "chunk_size",
                                             "mesh"))
def batch_packed_logprobs(cfg, params, tokens, segment_ids, targets, columns=None, *,
                          temperature, with_entropy=False, chunk_size=losses.DEFAULT_CHUNK_SIZE,
                          mesh=None):
    """Jitted `packed_logprobs` without gradients: old (with entropy) and reference logprobs.
    mesh: the training mesh (activations sharded by TRAIN_RULES), or None."""
    with rules_for(mesh, TRAIN_RULES):
        return packed_logprobs(cfg, params, tokens, segment_ids, targets, temperature,
                               columns=columns, with_entropy=with_entropy,
                               chunk_size=chunk_size)


class PackedStep:
    """The GRPO update over packed micro-batches (any number per mini-batch).

    `accumulate(params, acc, micro) -> acc` adds one micro-batch's gradient and metric
    partial sums; `apply(params, opt_state, acc) -> (params, opt_state, metrics)` takes
    the optimizer step (a non-finite loss or gradient leaves both unchanged, skipped = 1).
    micro: tokens, segment_ids, targets, loss_mask [b, T], weights, advantages,
    old_logprobs, ref_logprobs (optionally sampler_logprobs, tis_weights) float32 [b, T],
    columns int32 [b, R] (the lm head's columns), metric_weight float32 scalar (batch.py,
    rl/old_logprobs.py). Each program is compiled once per micro-batch shape (b, T, R);
    `step` runs a mini-batch.
    mesh: the training mesh: activations are sharded by TRAIN_RULES over it (None: none).
    """

    @staticmethod
    def cache_key(rl: RLConfig) -> tuple:
        """The rl fields the compiled programs depend on. rl.loss_agg is not one of them:
        the packed layout carries the aggregation in per-token weights (batch.py), so one
        PackedStep serves every loss_agg mode. rl.old_logprobs is: in sampler mode the loss
        also reports the rollout/trainer mismatch (rl/old_logprobs.in_step)."""
        return (rl.clip_low, rl.clip_high, rl.clip_c, rl.kl_coef, rl.kl_kind, rl.entropy_coef,
                rl.old_logprobs)

    def __init__(self, cfg: ModelConfig, rl: RLConfig, optimizer: optax.GradientTransformation,
                 *, temperature: float, chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
                 mesh=None):
        want_entropy = rl.entropy_coef != 0.0

        def loss_fn(params, mb):
            with rules_for(mesh, TRAIN_RULES):
                return _loss_fn(params, mb)

        def _loss_fn(params, mb):
            out = packed_logprobs(cfg, params, mb["tokens"], mb["segment_ids"], mb["targets"],
                                  temperature, columns=mb.get("columns"),
                                  with_entropy=want_entropy, chunk_size=chunk_size)
            logp, ent = out if want_entropy else (out, None)
            loss, metrics = losses.weighted_grpo_loss(
                logp, mb["old_logprobs"], mb["ref_logprobs"], mb["advantages"], mb["loss_mask"],
                mb["weights"], mb["metric_weight"], clip_low=rl.clip_low, clip_high=rl.clip_high,
                clip_c=rl.clip_c, kl_coef=rl.kl_coef, kl_kind=rl.kl_kind, entropy=ent,
                entropy_coef=rl.entropy_coef, tis=mb.get("tis_weights"))
            metrics.update(old_logprobs.in_step(rl, logp, mb, mb["metric_weight"]))
            return loss, metrics

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        self._loss_fn = loss_fn

        def accumulate(params, acc, mb):
            grads, metrics = acc
            (_, m), g = grad_fn(params, mb)
            grads = jax.tree.map(jnp.add, grads, g)
            # Partial sums add up over the micro-batches; maxima combine by max.
            metrics = {k: (jnp.maximum(metrics[k], v) if combines_by_max(k) else metrics[k] + v)
                       for k, v in m.items()}
            return grads, metrics

        def apply(params, opt_state, acc):
            grads, metrics = acc
            grad_norm = optax.global_norm(grads)
            finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(finite, a, b), new, old)
            metrics = {**metrics, "grad_norm": grad_norm,
                       "skipped": (~finite).astype(jnp.float32)}
            return keep(new_params, params), keep(new_opt_state, opt_state), metrics

        self.accumulate = jax.jit(accumulate, donate_argnums=(1,))
        self.apply = jax.jit(apply, donate_argnums=(0, 1))
        self._metric_keys = None

        def zeros(params, keys):
            metrics = {k: jnp.float32(-jnp.inf if combines_by_max(k) else 0.0) for k in keys}
            return jax.tree.map(jnp.zeros_like, params), metrics

        self._zeros = jax.jit(zeros, static_argnums=(1,))

    def zeros(self, params, micro: dict):
        """The empty accumulator (zero gradients, neutral metrics) for this params tree."""
        if self._metric_keys is None:
            self._metric_keys = tuple(jax.eval_shape(self._loss_fn, params, micro)[1])
        grads, metrics = self._zeros(params, self._metric_keys)
        # Placed (committed) like the outputs of `accumulate`: an uncommitted first
        # accumulator would compile `accumulate` a second time for every shape.
        grads = jax.tree.map(lambda z, p: jax.device_put(z, p.sharding), grads, params)
        s = jax.tree.leaves(params)[0].sharding
        scalar = (jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
                  if isinstance(s, jax.sharding.NamedSharding) else s)
        return grads, jax.device_put(metrics, scalar)

    def step(self, params, opt_state, micros: list[dict]):
        """One optimizer update over the micro-batches of a mini-batch."""
        # Commit fresh (uncommitted) inputs where they are: the step's outputs are
        # committed, and each kind would otherwise get its own compiled program.
        commit = lambda t: jax.tree.map(  # noqa: E731
            lambda x: x if getattr(x, "committed", True) else jax.device_put(x, x.sharding), t)
        params, opt_state = commit(params), commit(opt_state)
        acc = self.zeros(params, micros[0])
        for mb in micros:
            acc = self.accumulate(params, acc, mb)
        return self.apply(params, opt_state, acc)

    def cache_sizes(self) -> dict[str, int]:
        """Compiled programs so far (one per micro-batch shape)."""
        return {"accumulate": self.accumulate._cache_size(), "apply": self.apply._cache_size()}
