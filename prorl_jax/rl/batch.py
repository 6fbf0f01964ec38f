"""The train batch of one step, built once from the kept rollout groups and placed on the mesh.

Two layouts (rl.pack_sequences):

- packed (default): each kept sequence is its prompt followed by its response, with no
  padding to the cap. The sequences of one mini-batch are packed first-fit-decreasing into
  rows of a bucketed pack length T (`pack_length`); a row carries segment ids (1, 2, ...
  per sequence, 0 = padding), so attention stays within a sequence and positions restart
  at 0 per sequence. Values are stored at the position that *predicts* a response token:
  column c holds target = tokens[c + 1] and that token's mask, aggregation weight,
  advantage and (later) old / reference logprob. Rows are cut into micro-batches of b rows
  (at most rl.micro_batch_tokens tokens per device); b and T come from small bucket sets,
  so a run compiles a bounded number of programs.
- padded (the reference): the prompt left-padded to P, then the response right-padded to
  R = max_new_tokens; M = rl.micro_batches micro-batches of equal row counts.

Both follow one schedule: a permutation of the groups, drawn once per step, cut into
mini-batches of rl.mini_batch_prompts groups; every PPO epoch visits the same mini-batches
(as verl splits the batch once). Every rl.loss_agg mode is exact in the packed layout:
each token carries the weight `losses.token_weights` gives it over its mini-batch, so the
sum over micro-batches is the padded layout's aggregate, whatever the split.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from prorl_jax import losses
from prorl_jax.config import TrainConfig
from prorl_jax.errors import ConfigError
from prorl_jax.rl.losses import SEQ_MEAN_MODES
from prorl_jax.rl.rollout import Groups
from prorl_jax.rl.update import micro_weights
from prorl_jax.sampling.sampler import bucket

# Pack lengths and rows per device are 2^k or 3 * 2^(k-1): at most 1.5x apart, few shapes.
_MIN_PACK = 128


def bucket_prompt_len(max_len: int, limit: int) -> int:
    """Power-of-two bucket (>= 16) of the longest prompt, so few shapes get compiled."""
    return max(min(bucket(max_len, minimum=16), limit), max_len)


def _bucket_up(x: int, floor: int = 1, quarters: tuple[int, ...] = (4, 6)) -> int:
    """Smallest whole value >= x among floor * 2^k * q / 4 for q in quarters: by default
    floor * {1, 1.5, 2, 3, 4, 6, 8, ...}."""
    b = floor
    while True:
        for q in quarters:
            if b * q // 4 >= x and (b * q) % 4 == 0:
                return b * q // 4
        b *= 2


def _bucket_quarter(x: int, floor: int) -> int:
    """floor * 2^k * {1, 1.25, 1.5, 1.75}: at most 25% (mostly under 15%) above x, four
    shapes per octave."""
    return _bucket_up(x, floor, (4, 5, 6, 7))


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
    """Padded token and mask arrays for the kept groups (B = G*n rows)."""
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
    """Yields padded mini-batches ({key: [M, b, ...]}) following a permutation of the groups."""
    n = cfg.sampling.n
    per_mb = cfg.rl.mini_batch_prompts * n
    M = cfg.rl.micro_batches
    rows = (group_order[:, None] * n + np.arange(n)[None]).reshape(-1)
    total = -(-len(rows) // per_mb) * per_mb
    shuffled = pad_rows({k: a[rows] for k, a in arrays.items()}, total)
    for start in range(0, total, per_mb):
        mb = {k: a[start:start + per_mb] for k, a in shuffled.items()}
        yield {k: a.reshape(M, per_mb // M, *a.shape[1:]) for k, a in mb.items()}


# ----------------------------------------------------------------------------- packing


def micro_batch_tokens(cfg: TrainConfig) -> int:
    """Token budget per device per packed micro-batch (rl.micro_batch_tokens, 0 = auto:
    what one device holds of a padded micro-batch, so packing never needs more memory)."""
    if cfg.rl.micro_batch_tokens:
        return cfg.rl.micro_batch_tokens
    m = cfg.mesh
    rows = cfg.rl.mini_batch_prompts * cfg.sampling.n // cfg.rl.micro_batches
    rows_dev = max(1, rows // (m.data * m.fsdp))
    return rows_dev * (cfg.sampling.max_prompt_tokens + cfg.sampling.max_new_tokens)


def pack_length(longest: int, budget: int, dense: bool = False) -> int:
    """Row length T of a packed step.

    Flash-style attention (blockwise skips the tiles between two sequences of a row; cudnn
    and splash take segment ids) costs about the same for one long row as for its
    sequences apart, so rows are the whole budget: one row per device per micro-batch,
    the fullest packing and a single shape per run. Dense attention pays T x T per row,
    so its rows are the bucket of the longest sequence (at most the budget); the room a
    bucket leaves above the longest sequence is filled by shorter ones, not padding.
    """
    if longest > budget:
        raise ConfigError(f"rl.micro_batch_tokens ({budget}) is smaller than the longest "
                          f"sequence of this step ({longest} tokens)")
    if not dense:
        return budget
    return max(longest, min(_bucket_up(longest, _MIN_PACK), budget))


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= capacity, first-fit-decreasing.

    Ties keep index order, so the packing is a deterministic function of the lengths.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    free = np.empty(0, np.int64)
    bins: list[list[int]] = []
    for i in order:
        fits = np.nonzero(free >= lengths[i])[0]
        if len(fits):
            j = int(fits[0])
        else:
            j = len(bins)
            bins.append([])
            free = np.append(free, capacity)
        bins[j].append(int(i))
        free[j] -= lengths[i]
    return bins


def loss_columns_len(n: int, T: int) -> int:
    """R, the bucketed count of loss columns per row of a micro-batch (n = the most any row
    has): the lm head runs on R columns of each row. Above one lm-head chunk
    (losses.DEFAULT_CHUNK_SIZE) R is a whole number of chunks (the chunked head would pad to
    one anyway), below it a bucket of at least 64; never more than the row length T."""
    C = losses.DEFAULT_CHUNK_SIZE
    R = -(-n // C) * C if n > C else _bucket_up(max(n, 1), 64)
    return min(R, T)


def pack_minibatch(prompts: list[np.ndarray], responses: list[np.ndarray],
                   per_token: dict[str, list[np.ndarray]], T: int, rows_dev_max: int,
                   shards: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Packs one mini-batch's sequences into micro-batches of [b, T_u] arrays.

    Args:
      prompts, responses: per sequence, int token ids (response includes its stop token).
      per_token: name -> per sequence, the values of its response tokens ([R_s] each, e.g.
        aggregation weights, advantages, rollout logprobs), laid at the columns that
        predict those tokens.
      T: pack length; rows_dev_max: rows per device allowed by the token budget;
      shards: devices the batch axis spans (b is a multiple of it).
    Returns:
      micro-batches: dicts of tokens, segment_ids, targets, loss_mask int32 [b, T_u], one
      [b, T_u] array per `per_token` key (0 off the loss columns), and columns int32
      [b, R_u]: each row's loss columns in order, then -1 (`loss_columns_len`). T_u = T,
      except a micro-batch whose fullest row is shorter gets the bucket of that row
      (the last, partly filled micro-batch of a mini-batch computes no empty columns;
      quarter-octave buckets: at most 25% above its fill, four shapes per octave).
    """
    lengths = np.array([len(p) + len(r) for p, r in zip(prompts, responses)], np.int64)
    rows = first_fit_decreasing(lengths, T)
    b_max = rows_dev_max * shards
    n_micro = max(1, math.ceil(len(rows) / b_max))
    per_micro = math.ceil(len(rows) / n_micro)
    b = min(rows_dev_max, _bucket_up(math.ceil(per_micro / shards))) * shards
    out = []
    for u in range(n_micro):
        micro_rows = rows[u * per_micro:(u + 1) * per_micro]
        fill = max(int(lengths[row].sum()) for row in micro_rows)
        T_u = min(T, max(fill, _bucket_quarter(fill, _MIN_PACK)))
        n_loss = max(sum(len(responses[s]) for s in row) for row in micro_rows)
        arr = {"tokens": np.full((b, T_u), pad_id, np.int32),
               "segment_ids": np.zeros((b, T_u), np.int32),
               "targets": np.zeros((b, T_u), np.int32),
               "loss_mask": np.zeros((b, T_u), np.int32),
               "columns": np.full((b, loss_columns_len(n_loss, T_u)), -1, np.int32)}
        for k, vals in per_token.items():
            arr[k] = np.zeros((b, T_u), np.asarray(vals[0]).dtype)
        for r, row in enumerate(micro_rows):
            col, n_cols = 0, 0
            for seg, s in enumerate(row, start=1):
                p, resp = prompts[s], responses[s]
                P, L = len(p), len(resp)
                arr["tokens"][r, col:col + P] = p
                arr["tokens"][r, col + P:col + P + L] = resp
                arr["segment_ids"][r, col:col + P + L] = seg
                # Column c predicts token c + 1: response token t sits at col + P + t.
                pred = slice(col + P - 1, col + P - 1 + L)
                arr["targets"][r, pred] = resp
                arr["loss_mask"][r, pred] = 1
                arr["columns"][r, n_cols:n_cols + L] = np.arange(col + P - 1, col + P - 1 + L)
                for k, vals in per_token.items():
                    arr[k][r, pred] = vals[s]
                col += P + L
                n_cols += L
        out.append(arr)
    return out


# ----------------------------------------------------------------------------- the batch


@dataclasses.dataclass
class TrainBatch:
    """One step's training data on the device(s).

    packed: True for the packed layout. minibatches: per mini-batch, the list of packed
    micro-batch dicts ([b, T] arrays), or (padded) a one-element list holding the dict of
    [M, b, ...] arrays that `update.make_train_step` takes. scales: per mini-batch, its
    share of the step's aggregation normaliser (tokens or sequences), so that
    sum_k scale_k * aggregate_k is the aggregate over the whole step.
    prompt_len: P of the padded layout (None when packed). real_tokens: prompt + response
    tokens of all kept sequences; slots: tokens the micro-batches compute (padding included).
    """

    packed: bool
    minibatches: list[list[dict]]
    scales: list[float]
    prompt_len: int | None
    real_tokens: int
    slots: int


def _schedule(groups: Groups, order: np.ndarray, cfg: TrainConfig) -> list[np.ndarray]:
    """Row indices (group-major sequences) of each mini-batch, following `order`."""
    n = cfg.sampling.n
    g = cfg.rl.mini_batch_prompts
    return [(order[k:k + g, None] * n + np.arange(n)[None]).reshape(-1)
            for k in range(0, len(order), g)]


def _counts(lengths: np.ndarray, agg: str) -> float:
    return float((lengths > 0).sum() if agg in SEQ_MEAN_MODES else lengths.sum())


def train_batch(cfg: TrainConfig, groups: Groups, order: np.ndarray, pad_id: int,
                place=lambda x, batch_axis: x, shards: int = 1) -> TrainBatch:
    """Builds the step's arrays in the configured layout and places them once.

    Args:
      order: the permutation of groups that fixes the mini-batches.
      place: host array, batch axis -> device array (e.g. sharded over the mesh).
      shards: devices the batch axis spans (data x fsdp).
    """
    R = groups.tokens.shape[1]
    lengths = np.asarray(groups.lengths, np.int64)
    resp_mask = (np.arange(R)[None, :] < lengths[:, None]).astype(np.int32)
    adv = advantages(cfg, groups.rewards, resp_mask)
    agg = cfg.rl.loss_agg
    plan = _schedule(groups, order, cfg)
    total = _counts(lengths, agg)
    scales = [(_counts(lengths[rows], agg) / total if total > 0 else 0.0) for rows in plan]
    n = cfg.sampling.n
    prompt_lens = np.array([len(groups.prompt_ids[i // n]) for i in range(len(lengths))])
    real = int((prompt_lens + lengths).sum())

    if not cfg.rl.pack_sequences:
        prompt_len = bucket_prompt_len(int(prompt_lens.max()), cfg.sampling.max_prompt_tokens)
        arrays = layout(groups, prompt_len, pad_id)
        arrays["advantages"] = adv
        if groups.logprobs is not None:
            arrays["sampler_logprobs"] = np.where(resp_mask, groups.logprobs, 0.0).astype(np.float32)
        out = []
        for mb in minibatches(arrays, order, cfg):
            mb["weight"] = micro_weights(mb["response_mask"], cfg.rl.micro_batches, agg)
            out.append([{k: (np.asarray(v) if k == "weight" else place(v, 1))
                         for k, v in mb.items()}])
        slots = sum(int(np.prod(mb[0]["tokens"].shape)) for mb in out)
        return TrainBatch(False, out, scales, prompt_len, real, slots)

    budget = micro_batch_tokens(cfg)
    T = pack_length(int((prompt_lens + lengths).max()), budget,
                    dense=cfg.model.attention_impl == "dense")
    rows_dev_max = budget // T
    out = []
    slots = 0
    for rows in plan:
        w = np.asarray(losses.token_weights(lengths[rows], agg, normalizer=R), np.float32)
        prompts = [np.asarray(groups.prompt_ids[i // n], np.int32) for i in rows]
        responses = [groups.tokens[i, :lengths[i]] for i in rows]
        per_token = {
            "weights": [np.full(lengths[i], w[j], np.float32) for j, i in enumerate(rows)],
            "advantages": [(adv[i, :lengths[i]] if adv.ndim == 2 else
                            np.full(lengths[i], adv[i])).astype(np.float32) for i in rows]}
        if groups.logprobs is not None:  # the rollout's own (rl.old_logprobs: sampler)
            per_token["sampler_logprobs"] = [
                np.asarray(groups.logprobs[i, :lengths[i]], np.float32) for i in rows]
        micros = pack_minibatch(prompts, responses, per_token, T, rows_dev_max, shards, pad_id)
        # Token-mean weight of the logged metrics (clip fractions, ratios).
        inv_tokens = np.float32(1.0 / max(int(lengths[rows].sum()), 1))
        placed = []
        for mb in micros:
            slots += mb["tokens"].size
            d = {k: place(v, 0) for k, v in mb.items()}
            d["metric_weight"] = inv_tokens
            placed.append(d)
        out.append(placed)
    return TrainBatch(True, out, scales, None, real, slots)
