"""Rollouts: sample groups, score them, shape rewards, and filter them (dynamic sampling).

Everything here is host-side numpy around two device calls (the sampler and, through the
reward pool, the verifiers). `collect` keeps generating batches of prompts until
`prompts_per_step` groups with non-constant rewards are kept, or `max_gen_batches` is hit.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np

from prorl_jax import distributed, losses
from prorl_jax.config import TrainConfig
from prorl_jax.errors import UserError


class DynamicSamplingError(UserError):
    """Too few groups with informative (non-constant) rewards after max_gen_batches."""


@dataclasses.dataclass
class Groups:
    """G groups of n samples each, rows group-major (numpy, host side).

    records:      G prompt records
    prompt_ids:   G token-id lists
    tokens:       int32 [G*n, R] sampled response tokens (padding after `lengths`)
    lengths:      int32 [G*n] response lengths including the stop token
    finished:     bool [G*n] stopped by a stop token
    texts:        G*n decoded responses
    scores:       float32 [G*n] verifier rewards
    rewards:      float32 [G*n] rewards after shaping (what advantages see)
    logprobs:     float32 [G*n, R] the sampler's logprob of each response token (0 after
                  `lengths`), or None where the rows did not come from the sampler
    """

    records: list
    prompt_ids: list
    tokens: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    texts: list
    scores: np.ndarray
    rewards: np.ndarray
    logprobs: np.ndarray | None = None

    @property
    def num_groups(self) -> int:
        return len(self.records)

    def select(self, group_idx, n: int) -> Groups:
        group_idx = np.asarray(group_idx, int)
        rows = (group_idx[:, None] * n + np.arange(n)[None]).reshape(-1)
        return Groups(records=[self.records[i] for i in group_idx],
                      prompt_ids=[self.prompt_ids[i] for i in group_idx],
                      tokens=self.tokens[rows], lengths=self.lengths[rows],
                      finished=self.finished[rows], texts=[self.texts[i] for i in rows],
                      scores=self.scores[rows], rewards=self.rewards[rows],
                      logprobs=None if self.logprobs is None else self.logprobs[rows])

    @staticmethod
    def concat(parts: list[Groups]) -> Groups:
        return Groups(records=[r for p in parts for r in p.records],
                      prompt_ids=[x for p in parts for x in p.prompt_ids],
                      tokens=np.concatenate([p.tokens for p in parts]),
                      lengths=np.concatenate([p.lengths for p in parts]),
                      finished=np.concatenate([p.finished for p in parts]),
                      texts=[t for p in parts for t in p.texts],
                      scores=np.concatenate([p.scores for p in parts]),
                      rewards=np.concatenate([p.rewards for p in parts]),
                      logprobs=(None if any(p.logprobs is None for p in parts)
                                else np.concatenate([p.logprobs for p in parts])))


def shape_rewards(cfg: TrainConfig, scores: np.ndarray, lengths: np.ndarray,
                  finished: np.ndarray) -> np.ndarray:
    """Optional success thresholding, non-termination and DAPO overlong shaping of verifier
    scores."""
    rewards = np.asarray(scores, np.float32)
    if cfg.rl.success_threshold > 0:
        rewards = (rewards >= cfg.rl.success_threshold).astype(np.float32)
    if cfg.rl.nontermination_penalty is not None:
        rewards = np.asarray(losses.nontermination_penalty(
            rewards, finished, reward=cfg.rl.nontermination_penalty), np.float32)
    if cfg.rl.overlong_buffer > 0:
        rewards = rewards + np.asarray(losses.overlong_penalty(
            lengths, cfg.sampling.max_new_tokens, cfg.rl.overlong_buffer,
            cfg.rl.overlong_factor), np.float32)
    return rewards


class RolloutWorker:
    """Generates and scores groups for the trainer.

    Args:
      cfg: the run config.
      model_cfg, mesh: passed to the sampler.
      formatter: `prorl_jax.data.ChatFormatter` (record -> prompt token ids or None).
      tokenizer: decodes responses.
      reward_pool: `prorl_jax.rewards.RewardPool`.
      stop_token_ids: token ids that end a response (EOS).
    """

    def __init__(self, cfg: TrainConfig, model_cfg, mesh, formatter, tokenizer, reward_pool,
                 stop_token_ids):
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.mesh = mesh
        self.formatter = formatter
        self.tokenizer = tokenizer
        self.pool = reward_pool
        self.stop_token_ids = tuple(int(t) for t in stop_token_ids)
        self.dropped_prompts = 0

    def decode(self, tokens: np.ndarray, lengths: np.ndarray, finished: np.ndarray) -> list[str]:
        """Response texts; the stop token itself is not part of the text."""
        from prorl_jax.sampling.scoring import completion_ids

        return [self._decode_ids(completion_ids(row, n, done))
                for row, n, done in zip(tokens, lengths, finished)]

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def decode_params(self, params):
        """The sampling-layout params of this policy version (built once per step and
        shared by its generation batches, with either engine)."""
        from prorl_jax.sampling import decode_params

        return decode_params(self.model_cfg, params, mesh=self.mesh)

    def sample(self, params, records: list, seed: int, decode_params=None) -> tuple[Groups, dict]:
        """One generation batch: sample n responses per prompt and score them.

        Each response goes to the reward pool as soon as it is sampled (continuous engine),
        so time/reward is only the wait for the verifiers after the last response.
        """
        from prorl_jax.sampling import SamplingParams
        from prorl_jax.sampling.scoring import sample_and_score

        s = self.cfg.sampling
        encoded = [(r, self.formatter.encode(r)) for r in records]
        kept = [(r, ids) for r, ids in encoded if ids is not None]
        self.dropped_prompts += len(encoded) - len(kept)
        if not kept:
            raise DynamicSamplingError(
                f"every prompt of a batch is longer than sampling.max_prompt_tokens "
                f"({s.max_prompt_tokens})")
        records = [r for r, _ in kept]
        prompt_ids = [ids for _, ids in kept]
        params_s = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                  max_new_tokens=s.max_new_tokens, n=s.n,
                                  stop_token_ids=self.stop_token_ids)

        def item(row: int, text: str) -> tuple:
            rec = records[row // s.n]
            return rec.domain, text, rec.ground_truth

        # Several processes: every process gets every row and scores only its share with
        # its own reward pool (sample_and_score), so verification scales with hosts; the
        # gathered scores are the same bytes everywhere, so advantages and dynamic sampling
        # agree on every process.
        out = sample_and_score(self.model_cfg, params, prompt_ids, params_s, item=item,
                               decode=self._decode_ids, score=self.pool, seed=seed,
                               mesh=self.mesh, max_batch_tokens=s.max_batch_tokens or None,
                               engine=s.engine, decode_slots=s.decode_slots,
                               steps_per_sync=s.steps_per_sync, decode_params=decode_params)
        rewards = shape_rewards(self.cfg, out.scores, out.lengths, out.finished)
        groups = Groups(records=records, prompt_ids=prompt_ids, tokens=np.asarray(out.tokens),
                        lengths=np.asarray(out.lengths), finished=np.asarray(out.finished),
                        texts=out.texts, scores=out.scores, rewards=rewards,
                        logprobs=np.asarray(out.logprobs, np.float32))
        return groups, {"time/rollout": out.time_rollout, "time/reward": out.time_reward}

    def collect(self, params, iterator, seed_for_batch) -> tuple[Groups | None, dict]:
        """Dynamic sampling: returns up to prompts_per_step informative groups and metrics.

        `seed_for_batch(i)` gives the sampler seed of generation batch i, so a resumed run
        draws the same samples. Metrics describe every sample generated this step (before
        filtering), which is the unbiased view of how the policy is doing.
        """
        rl, n = self.cfg.rl, self.cfg.sampling.n
        target = rl.prompts_per_step
        kept_parts, all_parts = [], []
        kept_count, timings = 0, defaultdict(float)
        gen_batches = 0
        layout_params = self.decode_params(params)  # once per policy version
        while kept_count < target and gen_batches < rl.max_gen_batches:
            records = iterator.next_batch(target)
            groups, t = self.sample(params, records, seed_for_batch(gen_batches),
                                    decode_params=layout_params)
            for k, v in t.items():
                timings[k] += v
            gen_batches += 1
            all_parts.append(groups)
            if rl.dynamic_sampling:
                keep = np.asarray(losses.group_keep_mask(groups.rewards, n))
                # Every process must train on the same groups: checked, not assumed.
                distributed.check_same("the dynamic-sampling keep mask", keep)
            else:
                keep = np.ones(groups.num_groups, bool)
            idx = np.flatnonzero(keep)[: target - kept_count]
            if idx.size:
                kept_parts.append(groups.select(idx, n))
                kept_count += idx.size
            if not rl.dynamic_sampling:
                break
        everything = Groups.concat(all_parts)
        metrics = self._metrics(everything, kept_count, gen_batches)
        metrics.update(timings)
        if kept_count < target and rl.dynamic_sampling and rl.on_max_gen_batches == "error":
            raise DynamicSamplingError(
                f"dynamic sampling kept {kept_count} of {target} groups after "
                f"rl.max_gen_batches={rl.max_gen_batches} generation batches (every other group "
                f"got identical rewards); raise rl.max_gen_batches, or set "
                f"rl.on_max_gen_batches=train to train on the groups kept")
        kept = Groups.concat(kept_parts) if kept_parts else None
        return kept, metrics

    def _metrics(self, g: Groups, kept_groups: int, gen_batches: int) -> dict[str, Any]:
        n = self.cfg.sampling.n
        # Share of generated groups whose rewards were all equal (what the filter drops),
        # whether or not the step needed them: kept groups are also capped at the target.
        informative = np.asarray(losses.group_keep_mask(g.rewards, n))
        m: dict[str, Any] = {
            "reward/mean": float(g.rewards.mean()),
            "score/mean": float(g.scores.mean()),
            "response_length/mean": float(g.lengths.mean()),
            "response_length/max": int(g.lengths.max()),
            "response/finished_fraction": float(g.finished.mean()),
            "filtered_fraction": float(1.0 - informative.mean()),
            "gen_batches": gen_batches,
            "groups/generated": g.num_groups,
            "groups/kept": kept_groups,
            "prompts/dropped_too_long": self.dropped_prompts,
            "tokens/generated": int(g.lengths.sum()),
        }
        by_domain = defaultdict(list)
        for i, rec in enumerate(g.records):
            by_domain[rec.domain].append(g.rewards[i * n:(i + 1) * n])
        for d, rs in sorted(by_domain.items()):
            m[f"reward/{d}"] = float(np.concatenate(rs).mean())
        return m
