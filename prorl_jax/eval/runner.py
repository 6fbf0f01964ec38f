"""Sampling and scoring prompts for evaluation: the code the CLI and the trainer share.

  evaluate_records  n samples per prompt with the sampler, decoded and scored -> PromptResult
  validate_records  the trainer's held-out validation: evaluate_records + pass@1 / mean reward
  run_evaluation    several checkpoints into one output directory, resumable, with reports

Per-prompt results are appended to OUT/samples/<label>.jsonl after every batch, so a rerun
into the same directory samples only the prompts that are not there yet. The settings that
change the samples (OUT/samples/<label>.json) must match on a rerun.

Several processes (`prorl-jax eval` under jax.distributed): every process reads the same
records and samples the same batches over one global mesh (`distributed.sampling_mesh`),
scores its own share of each batch's rows with its own reward pool, and gets every score
(sampling.scoring); process 0 alone writes OUT and prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from prorl_jax import distributed
from prorl_jax.eval.passk import DEFAULT_THRESHOLD, EvalError, parse_ks
from prorl_jax.eval.report import (
    boundary_lines,
    build_report,
    passk_lines,
    validation_metrics,
    write_report,
)
from prorl_jax.eval.store import (
    PromptResult,
    append_results,
    read_results,
    record_fingerprint,
    record_task,
)
from prorl_jax.paths import resolve_model_dir
from prorl_jax.tokenizer import require_tokenizer, stop_token_ids


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Sampling settings of an evaluation; defaults are the paper's (temperature 0.6,
    top_p 0.95, 32k response budget, pass@1 over 16 samples).

    Attributes:
      n: samples per prompt.
      temperature, top_p, top_k, max_new_tokens: sampler settings.
      max_prompt_tokens: longer prompts are skipped and counted, never truncated.
      seed: sampling seed.
      use_chat_template: render prompts with the tokenizer's chat template.
      suffixes: per-domain instruction suffix overrides for ChatFormatter ("" disables one).
      batch_prompts: prompts per sampler call (and per append to the results file).
      max_batch_tokens: KV-cache budget per compiled chunk in token slots (0: no limit).
      engine: sampler engine, "continuous" or "static" (same samples; not in sample_key).
    """

    n: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 32768
    max_prompt_tokens: int = 4096
    seed: int = 0
    use_chat_template: bool = True
    suffixes: dict = dataclasses.field(default_factory=dict)
    batch_prompts: int = 8
    max_batch_tokens: int = 0
    engine: str = "continuous"

    def __post_init__(self):
        from prorl_jax.sampling.settings import check_engine_settings

        check_engine_settings(self.engine)
        if self.n < 1 or self.batch_prompts < 1 or self.max_prompt_tokens < 1:
            raise EvalError("n, batch_prompts and max_prompt_tokens must be >= 1")
        if self.max_batch_tokens < 0:
            raise EvalError("max_batch_tokens must be >= 0")

    def sample_key(self) -> dict:
        """The settings a rerun into the same output must share (they change the samples)."""
        return {k: getattr(self, k) for k in ("n", "temperature", "top_p", "top_k",
                                              "max_new_tokens", "seed", "use_chat_template",
                                              "suffixes")}


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """Sampler seed for one batch: differs between batches (no shared random streams across
    prompts) and depends only on the batch's prompt ids, not on its position in the run."""
    return zlib.crc32(json.dumps([int(seed), list(ids)]).encode()) & 0x7FFFFFFF


def tokenizer_decoder(tokenizer) -> Callable[[list[int]], str]:
    """Completion ids (stop token excluded) -> text, decoded exactly as the trainer's rollouts
    decode them (special tokens kept), so evaluation rewards match training rewards."""
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)


def _scorer(reward_pool) -> Callable[[list[tuple]], list[float]]:
    return reward_pool.score if hasattr(reward_pool, "score") else reward_pool


def evaluate_records(model_cfg, params, records: Sequence, *, encode: Callable,
                     decode: Callable[[list[int]], str], score, sampling, seed: int = 0,
                     mesh=None, batch_prompts: int = 8, max_batch_tokens: int | None = None,
                     on_batch: Callable[[list[PromptResult]], None] | None = None,
                     progress=None, engine: str = "continuous", decode_slots: int | None = None,
                     steps_per_sync: int | None = None) -> list[PromptResult]:
    """Sample `sampling.n` completions per prompt, decode and score them.

    Args:
      model_cfg, params: the model (prorl_jax.ModelConfig and its params).
      records: prompt records (prorl_jax.data.Record or anything with id, domain,
        ground_truth, meta).
      encode: record -> prompt token ids, or None to skip the prompt (e.g.
        ChatFormatter.encode, which returns None for prompts over its length limit).
      decode: completion token ids without the stop token -> text (see tokenizer_decoder).
      score: a RewardPool (its .score is used) or a function [(domain, completion,
        ground_truth)] -> [reward].
      sampling: prorl_jax.SamplingParams (n, temperature, ..., stop_token_ids).
      seed: base seed; each batch draws from batch_seed(seed, its ids).
      mesh: optional device mesh for the sampler.
      batch_prompts: prompts per sampler call.
      max_batch_tokens: the sampler's KV-cache budget per chunk (None: no limit).
      on_batch: called with each batch's results as soon as they are scored.
      progress: an object with .update(k) (e.g. tqdm), advanced by the prompts handled,
        skipped ones included.
      engine, decode_slots, steps_per_sync: the sampler engine (see sampling.generate);
        with the continuous one, completions are scored while the batch still decodes.

    Returns:
      PromptResult per encoded prompt, in input order (skipped prompts are left out).
    """
    from prorl_jax.sampling import decode_params
    from prorl_jax.sampling.scoring import sample_and_score
    from prorl_jax.sampling.settings import DEFAULT_STEPS_PER_SYNC

    if batch_prompts < 1:
        raise EvalError(f"batch_prompts must be >= 1, got {batch_prompts}")
    n = sampling.n
    out_results: list[PromptResult] = []
    policy = decode_params(model_cfg, params, mesh=mesh)  # once for every batch
    for start in range(0, len(records), batch_prompts):
        chunk = list(records[start:start + batch_prompts])
        encoded = [(r, encode(r)) for r in chunk]
        kept = [(r, ids) for r, ids in encoded if ids is not None]
        batch_results: list[PromptResult] = []
        if kept:
            def item(row: int, text: str, kept=kept) -> tuple:
                rec = kept[row // n][0]
                return rec.domain, text, rec.ground_truth

            gen = sample_and_score(
                model_cfg, params, [ids for _, ids in kept], sampling, item=item,
                decode=decode, score=_scorer(score),
                seed=batch_seed(seed, [str(r.id) for r, _ in kept]), mesh=mesh,
                max_batch_tokens=max_batch_tokens or None, engine=engine,
                decode_slots=decode_slots, steps_per_sync=steps_per_sync or DEFAULT_STEPS_PER_SYNC,
                decode_params=policy)
            lengths = [int(x) for x in gen.lengths]
            finished = [bool(x) for x in gen.finished]
            texts = gen.texts
            rewards = [float(x) for x in gen.scores]
            for i, (r, _) in enumerate(kept):
                rows = slice(i * n, (i + 1) * n)
                as_dict = record_dict(r)
                batch_results.append(PromptResult(
                    id=str(r.id), task=record_task(as_dict), domain=r.domain,
                    rewards=tuple(rewards[rows]), completions=tuple(texts[rows]),
                    lengths=tuple(lengths[rows]), finished=tuple(finished[rows]),
                    prompt_hash=record_fingerprint(as_dict)))
            if on_batch is not None:
                on_batch(batch_results)
        out_results.extend(batch_results)
        if progress is not None:
            progress.update(len(chunk))
    return out_results


def record_dict(r) -> dict:
    """A prompt record as the dict `record_task` and `record_fingerprint` take."""
    return {"domain": r.domain, "prompt": r.prompt, "ground_truth": r.ground_truth,
            "meta": r.meta}


def validate_records(model_cfg, params, formatter, tokenizer, records: Sequence, reward_pool, *,
                     n: int = 1, temperature: float = 0.6, top_p: float = 0.95, top_k: int = 0,
                     max_new_tokens: int = 8192, stop_token_ids: Sequence[int] = (),
                     seed: int = 0, mesh=None, threshold: float = DEFAULT_THRESHOLD,
                     batch_prompts: int = 64, max_batch_tokens: int | None = None,
                     prefix: str = "val/", engine: str = "continuous",
                     decode_slots: int | None = None,
                     steps_per_sync: int | None = None) -> dict[str, float]:
    """Held-out validation for the trainer: pass@1 and mean reward, overall and per domain.

    Args:
      model_cfg, params: the policy.
      formatter: prorl_jax.data.ChatFormatter (its .encode renders a record).
      tokenizer: decodes completions.
      records: validation prompt records.
      reward_pool: RewardPool (or a scoring function, see evaluate_records).
      n, temperature, top_p, top_k, max_new_tokens, stop_token_ids: sampler settings.
      seed: sampling seed.
      mesh: optional device mesh.
      threshold: success threshold for continuous rewards.
      batch_prompts, max_batch_tokens: batching (see evaluate_records).
      prefix: metric name prefix.
      engine, decode_slots, steps_per_sync: the sampler engine (see evaluate_records).

    Returns:
      {"val/pass@1", "val/reward/mean", "val/pass@1/<domain>", "val/reward/<domain>"}
      (see report.validation_metrics); empty when no prompt could be encoded.
    """
    from prorl_jax.sampling import SamplingParams

    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                              max_new_tokens=max_new_tokens, n=n,
                              stop_token_ids=tuple(stop_token_ids))
    results = evaluate_records(model_cfg, params, records, encode=formatter.encode,
                               decode=tokenizer_decoder(tokenizer), score=reward_pool,
                               sampling=sampling, seed=seed, mesh=mesh,
                               batch_prompts=batch_prompts, max_batch_tokens=max_batch_tokens,
                               engine=engine, decode_slots=decode_slots,
                               steps_per_sync=steps_per_sync)
    return validation_metrics(results, threshold, prefix=prefix)


# ----------------------------------------------------------------------- the CLI's driver


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short unique, file-name-safe labels for the models (directory names by default)."""
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._") or "model"

    parts = [os.path.normpath(s.split(":", 1)[1] if s.startswith("builtin:") else s)
             .split(os.sep) for s in specs]
    short = [clean(p[-1]) for p in parts]
    labels = [clean("_".join(p[-2:])) if short.count(s) > 1 and len(p) > 1 else s
              for s, p in zip(short, parts)]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            seen[label] += 1
            labels[i] = f"{label}-{seen[label]}"
        else:
            seen[label] = 0
    return labels


def _check_settings(path: str, meta: dict) -> None:
    """Refuse a rerun whose sampling settings differ from those of the samples on disk."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    diff = [k for k in meta if old.get(k) != meta[k]]
    if diff:
        k = diff[0]
        raise EvalError(f"{path} holds samples made with {k}={old.get(k)!r}, not "
                        f"{meta[k]!r}; use another --out or the same settings")


def _write_settings(path: str, meta: dict) -> None:
    """Record the settings next to the first samples; a run that fails before any sample
    is scored leaves no settings behind, so the corrected command may reuse --out."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def check_fits_model(model_dir: str, settings: EvalSettings, spec: str | None = None) -> None:
    """Refuse a response budget the model's positions cannot hold (read from config.json,
    before anything is loaded or written)."""
    from prorl_jax.model.hf import read_hf_config

    max_pos = read_hf_config(model_dir).get("max_position_embeddings")
    if isinstance(max_pos, int) and settings.max_new_tokens >= max_pos:
        raise EvalError(f"--max-new-tokens {settings.max_new_tokens} does not fit "
                        f"{spec or model_dir}: the model has {max_pos} positions "
                        f"(max_position_embeddings) for prompt and response together; use less "
                        f"than {max_pos}, leaving room for the prompts (e.g. --max-new-tokens "
                        f"{max_pos // 2})")


def _check_same_prompts(path: str, done: dict[str, PromptResult], records: Sequence) -> None:
    for r in records:
        old = done.get(str(r.id))
        if old is not None and old.prompt_hash and old.prompt_hash != record_fingerprint(
                record_dict(r)):
            raise EvalError(f"{path} holds samples of a different prompt with id {r.id!r} "
                            "(changed data or task config); use another --out")


def _sample_model(label: str, model_dir: str, pending: Sequence, settings: EvalSettings,
                  score, samples_path: str, total: int, show_progress: bool,
                  log: Callable[[str], None], record_settings: Callable[[], None]) -> None:
    from tqdm import tqdm

    from prorl_jax.data import ChatFormatter
    from prorl_jax.model.hf import load_hf
    from prorl_jax.sampling import SamplingParams
    from prorl_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    mesh = distributed.sampling_mesh()
    if mesh is None:
        model_cfg, params = load_hf(model_dir)
    else:
        from prorl_jax.sharding import SAMPLE_RULES

        model_cfg, params = load_hf(model_dir, mesh=mesh, rules=SAMPLE_RULES)
    # A prompt must leave room for the response in the model's positions: longer ones are
    # skipped and counted like those over max_prompt_tokens.
    prompt_limit = min(settings.max_prompt_tokens,
                       model_cfg.max_position_embeddings - settings.max_new_tokens)
    formatter = ChatFormatter(tokenizer, suffixes=dict(settings.suffixes) or None,
                              max_prompt_tokens=prompt_limit,
                              use_chat_template=settings.use_chat_template)
    sampling = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                              top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
                              n=settings.n,
                              stop_token_ids=stop_token_ids(model_dir, tokenizer, model_cfg))

    def on_batch(results: list[PromptResult]) -> None:
        if distributed.is_primary():  # every process holds the same results
            record_settings()
            append_results(samples_path, results)

    bar = tqdm(total=total, initial=total - len(pending), desc=label, unit="prompt",
               file=sys.stderr, disable=not show_progress or not distributed.is_primary(),
               dynamic_ncols=True)
    try:
        evaluate_records(model_cfg, params, pending, encode=formatter.encode,
                         decode=tokenizer_decoder(tokenizer), score=score, sampling=sampling,
                         seed=settings.seed, mesh=mesh, batch_prompts=settings.batch_prompts,
                         max_batch_tokens=settings.max_batch_tokens or None,
                         engine=settings.engine, on_batch=on_batch, progress=bar)
    finally:
        bar.close()
    if formatter.dropped:
        log(f"{label}: skipped {formatter.dropped} prompt(s) longer than {prompt_limit} "
            "tokens")


def run_evaluation(model_specs: Sequence[str], records: Sequence, out_dir: str,
                   settings: EvalSettings, ks: Sequence[int] | None = None, *,
                   threshold: float = DEFAULT_THRESHOLD, labels: Sequence[str] | None = None,
                   reward_workers: int = 2, reward_timeout_s: float = 10.0,
                   data_spec: str = "", show_progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Evaluate checkpoints on prompt records and write every report into out_dir.

    Writes OUT/samples/<label>.jsonl (per-prompt completions and rewards) and
    OUT/samples/<label>.json (sampling settings), OUT/results.json, OUT/report.md and
    OUT/plots/*.png. Prompts already in a model's JSONL are not sampled again.

    Args:
      model_specs: checkpoint directories (or builtin:NAME); the first is the base.
      records: prompt records (unique ids).
      out_dir: output directory.
      settings: sampling settings.
      ks: k values (default: powers of two up to settings.n).
      threshold: success threshold for continuous rewards.
      labels: names for the models (default: from their directories).
      reward_workers: reward processes (0: score in this process, no timeouts).
      reward_timeout_s: wall-clock limit per reward item.
      data_spec: recorded in the report.
      show_progress: draw a progress bar per model.
      log: where one-line messages go.

    Returns:
      the report dict written to results.json.
    """
    from prorl_jax.eval.plots import plot_report

    primary = distributed.is_primary()
    if not primary:
        log = _silent  # process 0 prints for all
    ks = parse_ks(",".join(str(k) for k in ks), n=settings.n) if ks else parse_ks("", settings.n)
    if not model_specs:
        raise EvalError("no --model given")
    if not records:
        raise EvalError("no prompts to evaluate")
    dirs = [resolve_model_dir(s) for s in model_specs]
    for spec, model_dir in zip(model_specs, dirs):
        check_fits_model(model_dir, settings, spec)
        require_tokenizer(model_dir)
    labels = list(labels) if labels else model_labels(model_specs)
    if len(labels) != len(dirs) or len(set(labels)) != len(labels):
        raise EvalError(f"need one distinct label per model, got {labels}")
    for label in labels:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise EvalError(f"model label {label!r}: use letters, digits, '_', '.' and '-' only")

    # Every check before the first sample, so a refused rerun changes nothing.
    plans = []
    for label, model_dir in zip(labels, dirs):
        samples_path = os.path.join(out_dir, "samples", f"{label}.jsonl")
        settings_path = os.path.join(out_dir, "samples", f"{label}.json")
        sample_meta = {"model": os.path.abspath(model_dir), **settings.sample_key()}
        _check_settings(settings_path, sample_meta)
        done = read_results(samples_path)
        _check_same_prompts(samples_path, done, records)
        plans.append((label, model_dir, samples_path, settings_path, sample_meta, done))

    pool = None
    try:
        results_by_model: dict[str, list[PromptResult]] = {}
        for label, model_dir, samples_path, settings_path, sample_meta, done in plans:
            pending = [r for r in records if str(r.id) not in done]
            if pending:
                log(f"{label}: sampling {len(pending)} of {len(records)} prompts "
                    f"({len(records) - len(pending)} already in {samples_path})")
                if pool is None and reward_workers > 0:
                    from prorl_jax.rewards import RewardPool

                    pool = RewardPool(reward_workers, reward_timeout_s,
                                      preload=sorted({r.domain for r in records}))
                score = pool if pool is not None else _inline_scorer
                _sample_model(label, model_dir, pending, settings, score, samples_path,
                              len(records), show_progress, log,
                              lambda p=settings_path, m=sample_meta: _write_settings(p, m))
                # Process 0 wrote the samples; the others read them once it has.
                distributed.sync(f"prorl_jax.eval samples of {label} written")
                done = read_results(samples_path)
            else:
                log(f"{label}: all {len(records)} prompts already sampled in {samples_path}")
            results_by_model[label] = [done[str(r.id)] for r in records if str(r.id) in done]
    finally:
        if pool is not None:
            pool.close()

    report = build_report(results_by_model, ks, threshold,
                          settings={**settings.sample_key(), "data": data_spec},
                          model_paths=dict(zip(labels, model_specs)))
    if not primary:
        return report
    plots = plot_report(report, os.path.join(out_dir, "plots"), rel_to=out_dir)
    json_path, md_path = write_report(out_dir, report, plots)
    log("\n".join(["", "pass@k (%)", *passk_lines(report)]))
    if len(labels) > 1:
        log("\n".join(["", "Reasoning boundary", *boundary_lines(report["boundary"], labels[0])]))
    log(f"\nwrote {json_path}, {md_path} and {len(plots)} plot(s) in "
        f"{os.path.join(out_dir, 'plots')}")
    return report


def _silent(_: str) -> None:
    pass


def _inline_scorer(items: list[tuple[str, str, Any]]) -> list[float]:
    from prorl_jax.rewards import score_batch

    return score_batch(items, num_workers=0)
