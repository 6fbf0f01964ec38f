"""Training arrays from kept rollout groups: layout, advantages, mini/micro-batch split.

Layout of one sequence (T = P + R): the prompt left-padded to P, then the response
right-padded to R = max_new_tokens. Padding rows (mask 0 everywhere) fill the last
mini-batch when fewer groups than planned were kept, so every update has one static shape.
"""

from __future__ import annotations

import numpy as np

from prorl_jax import losses
from prorl_jax.config import TrainConfig
from prorl_jax.rl.rollout import Groups
from prorl_jax.sampling.sampler import bucket


def bucket_prompt_len(max_len: int, limit: int) -> int:
    """Power-of-two bucket (>= 16) of the longest prompt, so few shapes get compiled."""
    return max(min(bucket(max_len, minimum=16), limit), max_len)


def advantages(cfg: TrainConfig, rewards: np.ndarray, response_mask: np.ndarray) -> np.ndarray:
    """Per-sequence [B] or per-token [B, R] advantages of group-major rewards."""
    n = cfg.sampling.n
    kind = cfg.rl.advantage
    if kind == "grpo":
        return np.asarray(losses.grpo_advantages(rewards, n, norm_by_std=cfg.rl.norm_adv_by_std))
    if kind == "rloo":
        return np.asarray(losses.rloo_advantages(rewards, n))
    return np.asarray(losses.reinforce_pp_baseline_advantages(rewards, n, response_mask))


def layout(groups: Groups, prompt_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Token and mask arrays for the kept groups (B = G*n rows)."""
    n = len(groups.texts) // groups.num_groups
    B, R = groups.tokens.shape
    tokens = np.full((B, prompt_len + R), pad_id, np.int32)
    attn = np.zeros((B, prompt_len + R), np.int32)
    for g, ids in enumerate(groups.prompt_ids):
        rows = slice(g * n, (g + 1) * n)
        tokens[rows, prompt_len - len(ids):prompt_len] = ids
        attn[rows, prompt_len - len(ids):prompt_len] = 1
    resp_mask = np.arange(R)[None, :] < groups.lengths[:, None]
    tokens[:, prompt_len:] = np.where(resp_mask, groups.tokens, pad_id)
    attn[:, prompt_len:] = resp_mask
    return {"tokens": tokens, "attention_mask": attn, "response_mask": resp_mask.astype(np.int32)}


def pad_rows(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Appends all-zero rows (masked out everywhere) up to `rows` rows."""
    out = {}
    for k, a in arrays.items():
        extra = rows - a.shape[0]
        out[k] = np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)]) if extra > 0 else a
    return out


def minibatches(arrays: dict[str, np.ndarray], group_order: np.ndarray, cfg: TrainConfig):
    """Yields mini-batches ({key: [M, b, ...]}) following a permutation of the groups."""
    n = cfg.sampling.n
    per_mb = cfg.rl.mini_batch_prompts * n
    M = cfg.rl.micro_batches
    rows = (group_order[:, None] * n + np.arange(n)[None]).reshape(-1)
    total = -(-len(rows) // per_mb) * per_mb
    shuffled = pad_rows({k: a[rows] for k, a in arrays.items()}, total)
    for start in range(0, total, per_mb):
        mb = {k: a[start:start + per_mb] for k, a in shuffled.items()}
        yield {k: a.reshape(M, per_mb // M, *a.shape[1:]) for k, a in mb.items()}
