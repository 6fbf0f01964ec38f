"""Per-token log-probabilities and entropies, from logits or (chunked) from hidden states.

The RL losses need, for every response token, log pi(token) and optionally the entropy of
pi at that position, both under the *temperature-scaled* distribution softmax(logits / tau)
(verl computes training logprobs at the rollout temperature so that ratio, KL and entropy
refer to the distribution that was actually sampled).

At the real recipe's sizes (V = 151936, T >= 8192) the float32 logits of one sequence are
~5 GB, so the `*_from_hidden` forms never build them: they take the final normed hidden
states h [B, T, D] and the lm-head matrix w [D, V] and scan over chunks of C positions,
computing logits [B, C, V] in float32 for one chunk at a time. With more than one chunk the
chunk body is wrapped in `jax.checkpoint`, so the backward pass recomputes each chunk's
logits instead of keeping all of them: peak temporary memory is O(B * C * V) in both
directions, independent of T.
Chunks split T (not B) so that a batch sharded over the data axis stays sharded in every step.

The sampler calls `token_logprobs` for every decoded token, so rollout and trainer logprobs
are one function of the logits.
"""

import jax
import jax.numpy as jnp

from prorl_jax.errors import ConfigError
from prorl_jax.model.linear import linear

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "entropy_from_hidden",
    "entropy_from_logits",
    "logprobs_and_entropy_from_hidden",
    "token_logprobs",
    "token_logprobs_from_hidden",
]

# One chunk's logits take B * C * V * 4 bytes (B=1, C=512, V=151936: ~311 MB).
DEFAULT_CHUNK_SIZE = 512


def _scaled(logits, temperature):
    return logits.astype(jnp.float32) / temperature


def _logprobs_of(z, tokens):
    # z [..., V] float32 (already temperature-scaled); tokens int [...]
    picked = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def _entropy_of(z):
    # H = -sum p log p = logsumexp(z) - sum p z; this form never takes log of a zero prob.
    p = jax.nn.softmax(z, axis=-1)
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(p * z, axis=-1)


def token_logprobs(logits, tokens, temperature=1.0):
    """Log-probability of each chosen token under softmax(logits / temperature).

    Args:
        logits: [..., V] (e.g. [B, T, V], or [B, V] in the sampler) any float dtype
            (computed in float32).
        tokens: int [...] token ids whose probability to read.
        temperature: scalar > 0 dividing the logits (a traced value is fine).

    Returns:
        float32 [...]: log pi(tokens) at each position.
    """
    return _logprobs_of(_scaled(logits, temperature), tokens)


def entropy_from_logits(logits, temperature=1.0):
    """Entropy of softmax(logits / temperature) at each position.

    Args:
        logits: [B, T, V] any float dtype (computed in float32).
        temperature: scalar > 0 dividing the logits.

    Returns:
        float32 [B, T]: -sum_v p_v log p_v, in nats.
    """
    return _entropy_of(_scaled(logits, temperature))


def _check_chunk_size(chunk_size):
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _chunked_over_t(body, hidden, w, tokens, chunk_size):
    """Maps `body(h_c [B, C, D], w [D, V], tok_c [B, C]) -> tuple of [B, C]` over T-chunks.

    Pads T up to a multiple of C (padding rows are computed and then dropped), stacks the
    chunks on a leading axis and runs them through one `lax.map`, i.e. a scan whose body is
    rematerialized in the backward pass. T <= C is one plain call of `body`.
    """
    _check_chunk_size(chunk_size)
    B, T, D = hidden.shape
    if T <= chunk_size:
        # One chunk: its logits are the peak of the forward either way, and the backward
        # that needs them runs next, so keeping them costs no extra peak memory and saves
        # recomputing the lm head (the 40M train step's second shape on one core: 4.49 -> 4.38 s,
        # docs/performance.md).
        return body(hidden, w, tokens)
    C = chunk_size
    n = -(-T // C)
    pad = n * C - T
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
    h_chunks = jnp.moveaxis(hidden.reshape(B, n, C, D), 1, 0)  # [n, B, C, D]
    tok_chunks = jnp.moveaxis(tokens.reshape(B, n, C), 1, 0)  # [n, B, C]
    step = jax.checkpoint(lambda xs: body(xs[0], w, xs[1]), prevent_cse=False)
    outs = jax.lax.map(step, (h_chunks, tok_chunks))  # tuple of [n, B, C]
    return tuple(jnp.moveaxis(o, 0, 1).reshape(B, n * C)[:, :T] for o in outs)


def _chunk_logits(h, w, temperature):
    # h [B, C, D] (one chunk of T), w [D, V] in their own dtypes; accumulate in float32.
    logits = linear("BTD,DV->BTV", h, w, preferred_element_type=jnp.float32)
    return logits / temperature


def logprobs_and_entropy_from_hidden(hidden, w, tokens, temperature=1.0,
                                     chunk_size=DEFAULT_CHUNK_SIZE):
    """Token log-probs and entropies from final hidden states, without full logits.

    Equal to `token_logprobs(h @ w, tokens, temperature)` and
    `entropy_from_logits(h @ w, temperature)` but processed over chunks of `chunk_size`
    positions, so only one chunk's float32 logits [B, C, V] exist at a time, in the forward
    and in the backward pass. Differentiable w.r.t. `hidden` and `w`.

    Args:
        hidden: [B, T, D] final (normed) hidden states, any float dtype.
        w: [D, V] lm-head matrix (the embedding transposed when tied), any float dtype.
        tokens: int [B, T] token ids whose log-probability to read.
        temperature: scalar > 0 dividing the logits.
        chunk_size: positions per chunk, C; memory per chunk ~ B * C * V * 4 bytes.

    Returns:
        (logp float32 [B, T], entropy float32 [B, T]).
    """

    def body(h, w_, tok):
        z = _chunk_logits(h, w_, temperature)  # [B, C, V]
        return _logprobs_of(z, tok), _entropy_of(z)

    return _chunked_over_t(body, hidden, w, tokens, chunk_size)


def token_logprobs_from_hidden(hidden, w, tokens, temperature=1.0,
                               chunk_size=DEFAULT_CHUNK_SIZE):
    """Chunked `token_logprobs` taking hidden states [B, T, D] and lm-head w [D, V].

    Args:
        hidden: [B, T, D] final (normed) hidden states, any float dtype.
        w: [D, V] lm-head matrix, any float dtype.
        tokens: int [B, T] token ids.
        temperature: scalar > 0 dividing the logits.
        chunk_size: positions per chunk (memory per chunk ~ B * C * V * 4 bytes).

    Returns:
        float32 [B, T] log-probabilities.
    """

    def body(h, w_, tok):
        return (_logprobs_of(_chunk_logits(h, w_, temperature), tok),)

    return _chunked_over_t(body, hidden, w, tokens, chunk_size)[0]


def entropy_from_hidden(hidden, w, temperature=1.0, chunk_size=DEFAULT_CHUNK_SIZE):
    """Chunked `entropy_from_logits` taking hidden states [B, T, D] and lm-head w [D, V].

    Args:
        hidden: [B, T, D] final (normed) hidden states, any float dtype.
        w: [D, V] lm-head matrix, any float dtype.
        temperature: scalar > 0 dividing the logits.
        chunk_size: positions per chunk (memory per chunk ~ B * C * V * 4 bytes).

    Returns:
        float32 [B, T] entropies in nats.
    """
    B, T, _ = hidden.shape
    dummy = jnp.zeros((B, T), jnp.int32)

    def body(h, w_, _tok):
        return (_entropy_of(_chunk_logits(h, w_, temperature)),)

    return _chunked_over_t(body, hidden, w, dummy, chunk_size)[0]
