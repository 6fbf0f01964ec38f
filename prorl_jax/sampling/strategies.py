"""Sampling strategies: how the next token is drawn from float32 logits [B, V].

A strategy is a small frozen pytree dataclass. Fields that change the traced program
(greedy or not, top-k size, whether top-p is on) are static: they sit in the tree
structure and so in jit's cache key. Fields that are only numbers (temperature, top_p)
are leaves, so changing them between calls does not recompile.

Sampling uses the inverse CDF with ONE uniform number per row and step instead of
Gumbel-max over the vocabulary: drawing V random numbers per row per step costs more than
the model on a CPU at small batch sizes, and a single uniform per row keeps each row's
random stream a function of its own key only.

Logprob definition (the one the trainer uses for old logprobs): the log-probability of the
sampled token under softmax(logits / temperature) over the FULL vocabulary, i.e. before
top-k / top-p truncation and renormalisation. Greedy decoding (temperature 0) reports the
logprob at temperature 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from prorl_jax.errors import ConfigError
from prorl_jax.sampling.checks import check_sampling


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """What to sample and for how long.

    Attributes:
      temperature: 0 means greedy decoding; otherwise logits are divided by it.
      top_p: nucleus sampling; keep the smallest set of most likely tokens whose
        probability mass reaches top_p (1.0 = off).
      top_k: keep only the k most likely tokens (0 = off). Applied before top_p.
      max_new_tokens: generation budget per sample.
      n: samples per prompt; output rows are prompt-major.
      stop_token_ids: a row finishes when it emits one of these (it is kept in the
        output and counted in its length). Nothing is added implicitly: pass the
        tokenizer's EOS ids here.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        check_sampling("sampling", temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, max_new_tokens=self.max_new_tokens, n=self.n)
        ids = tuple(int(t) for t in self.stop_token_ids)
        if any(t < 0 for t in ids):
            raise ConfigError(f"sampling stop_token_ids must be non-negative, got {ids}")
        object.__setattr__(self, "stop_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@struct.dataclass
class Greedy:
    """Always the most likely token (first one on ties, like argmax)."""

    def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
        """logits float32 [B, V], keys [B] (unused) -> tokens int32 [B]."""
        del keys
        # max, then the first index holding it: two plain reductions that XLA:CPU
        # vectorises, where argmax's (value, index) pair reduction runs 4-5x slower (a
        # measurable share of a decode step at a 16k vocabulary).
        vocab = logits.shape[-1]
        top = jnp.max(logits, axis=-1, keepdims=True)  # [B, 1]
        first = jnp.min(jnp.where(logits == top, jnp.arange(vocab, dtype=jnp.int32), vocab),
                        axis=-1)
        return jnp.minimum(first, vocab - 1)  # a NaN row has no match: clamp into range

    @property
    def logprob_temperature(self):
        return 1.0


@struct.dataclass
class Categorical:
    """Sample from softmax(logits / temperature), optionally truncated by top-k then top-p."""

    temperature: jax.Array | float = 1.0
    top_p: jax.Array | float = 1.0
    top_k: int = struct.field(pytree_node=False, default=0)
    use_top_p: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
        """Draw one token per row.

        Args:
          logits: float32 [B, V].
          keys: typed PRNG keys [B], one per row.
        Returns:
          int32 [B] token ids.
        """
        scaled = logits / self.temperature  # [B, V]
        if self.top_k:
            cand, ids = jax.lax.top_k(scaled, self.top_k)  # [B, k] sorted descending
        elif self.use_top_p:
            ids = jnp.argsort(-scaled, axis=-1)  # [B, V]
            cand = jnp.take_along_axis(scaled, ids, axis=-1)
        else:
            cand, ids = scaled, None
        probs = jax.nn.softmax(cand, axis=-1)  # [B, C] renormalised over the candidates
        cdf = jnp.cumsum(probs, axis=-1)  # [B, C]
        if self.use_top_p:
            # Candidates are sorted, so the kept set is a prefix: every token whose preceding
            # mass is still below top_p (the first one is always kept).
            keep = (cdf - probs) < self.top_p
            mass = jnp.max(jnp.where(keep, cdf, 0.0), axis=-1)  # [B]
            last = jnp.sum(keep, axis=-1) - 1  # [B]
        else:
            mass = cdf[:, -1]  # [B], 1 up to rounding
            last = cand.shape[-1] - 1
        u = jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32))(keys)  # [B]
        # First index whose cdf exceeds u * mass; zero-probability tokens never qualify
        # because their cdf equals their predecessor's.
        choice = jnp.sum(cdf <= (u * mass)[:, None], axis=-1)
        choice = jnp.minimum(choice, last)  # u * mass may round up to mass itself
        if ids is None:
            return choice.astype(jnp.int32)
        return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    @property
    def logprob_temperature(self):
        return self.temperature


Strategy = Greedy | Categorical


def strategy_for(sampling: SamplingParams, vocab_size: int) -> Strategy:
    """The strategy implementing `sampling` for a model with `vocab_size` logits."""
    if sampling.greedy:
        return Greedy()
    top_k = sampling.top_k if 0 < sampling.top_k < vocab_size else 0
    return Categorical(temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                       top_k=top_k, use_top_p=sampling.top_p < 1.0)
