"""The ProRL training loop: rollouts -> rewards -> dynamic sampling -> GRPO updates,
with reference resets, validation, Orbax checkpoints and exact resume.

Run-directory layout:
    config.yaml        the resolved config of the run
    metrics.jsonl      one JSON object per step
    tensorboard/       event files
    checkpoints/<s>/   the last `checkpoint.keep_last` train states (Orbax)
    pre_reset/<s>/     the policy/reference/optimizer just before each reference reset
    hf/                the final policy in Hugging Face format
    boundary/          base vs final policy on held-out prompts (config `boundary`, rl/boundary.py)
    summary.json       validation before / after, resets, steps (written at the end)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prorl_jax import losses
from prorl_jax.checkpoint import Checkpointer, complete_steps, resolve_step
from prorl_jax.config import TrainConfig, to_dict
from prorl_jax.errors import ConfigError
from prorl_jax.paths import resolve_model_dir
from prorl_jax.rl import batch as batching
from prorl_jax.rl import old_logprobs
from prorl_jax.rl import state as state_lib
from prorl_jax.rl.metrics_log import MetricsLogger
from prorl_jax.rl.rollout import DynamicSamplingError, RolloutWorker
from prorl_jax.rl.startup import check_chat_template, check_positions, write_config
from prorl_jax.rl.update import (
    PackedStep,
    batch_logprobs,
    batch_packed_logprobs,
    combines_by_max,
    make_train_step,
)

log = logging.getLogger(__name__)


# Train-state keys of earlier versions that a restore reads and ignores.
LEGACY_STATE_KEYS = ("rng",)


@dataclasses.dataclass
class Counters:
    """Run bookkeeping that checkpoints carry (in meta), so a resumed run continues it."""

    kl_streak: int = 0  # consecutive steps whose KL term dominated (reference_reset.kl_fraction)
    val_history: list = dataclasses.field(default_factory=list)  # val reward per evaluation
    resets: list = dataclasses.field(default_factory=list)  # {"step", "reason"} per reset
    skipped_updates: int = 0  # updates dropped for a non-finite loss or gradient
    dropped_prompts: int = 0  # prompts longer than sampling.max_prompt_tokens
    empty_steps: int = 0  # steps where every group had identical rewards (nothing to learn)
    empty_streak: int = 0  # consecutive such steps (rl.max_empty_steps ends the run)
    val_before: dict | None = None  # the base model's validation, kept for the summary


def seed_for(seed: int, step: int, gen_batch: int) -> int:
    """Sampler seed of generation batch `gen_batch` of `step`: independent of history."""
    return int(np.random.SeedSequence([seed, step, gen_batch]).generate_state(1)[0] >> 1)


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint and exits at the next safe
    point (exit code 128 + signal: 130 / 143, so a scheduler can tell a preempted run from
    a finished one). A second signal exits at once, without saving, through `os._exit`:
    unwinding Python while XLA threads are compiling or running can crash the interpreter
    (a segfault once seen on a double Ctrl-C), and the last complete checkpoint is kept
    either way."""

    def __init__(self, on_force_exit=None):
        self.signal: str | None = None
        self._old = {}
        self._on_force_exit = on_force_exit

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    @property
    def exit_code(self) -> int:
        return 128 + int(signal.Signals[self.signal]) if self.signal else 0

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None:
            sys.stderr.write(f"\nsecond signal ({name}): exiting now without saving; the last "
                             f"complete checkpoint is kept\n")
            sys.stderr.flush()
            sys.stdout.flush()
            if self._on_force_exit is not None:
                with contextlib.suppress(Exception):
                    self._on_force_exit()
            os._exit(128 + signum)
        self.signal = name
        log.warning("%s received: finishing the current step, saving a checkpoint, exiting "
                    "(a second signal exits at once, without saving)", name)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Owns everything of one run; `run()` trains to `cfg.steps` and returns a summary."""

    def __init__(self, cfg: TrainConfig, run_dir: str | pathlib.Path, *, resume: bool = False,
                 reset_reference: bool = False, console=print, resume_step: int | None = None):
        from prorl_jax import distributed

        self.cfg = cfg
        self.run_dir = pathlib.Path(run_dir)
        # Several processes (docs/distributed.md): process 0 alone prints, logs metrics and
        # writes config.yaml / summary.json; every process takes part in every collective
        # (checkpoints, the HF export, gathers).
        self.primary = distributed.is_primary()
        self.console = console if self.primary else _quiet
        self.manual_reset = reset_reference
        self._closed = False
        self.resume_step = resume_step  # None: the latest complete checkpoint
        from prorl_jax.model import attention

        # An attention implementation this backend lacks fails before anything is written.
        attention.check_backend(cfg.model.attention_impl, cfg.model.dtype)
        ckpt_dir = self.run_dir / "checkpoints"
        if not resume and complete_steps(ckpt_dir):
            raise ConfigError(f"{self.run_dir} already holds checkpoints: resume it with "
                              f"--resume {self.run_dir}, or pick another --run-dir")
        if resume and not complete_steps(ckpt_dir):
            raise ConfigError(f"--resume {self.run_dir}: no complete checkpoint in {ckpt_dir}")
        # Everything that can fail on a bad config, model or dataset runs before anything is
        # written: a failed start leaves no run directory behind, and a resumed run keeps its
        # last good config.yaml.
        self.model_dir = _model_dir(cfg)  # the checkpoint, or only the tokenizer of a random init
        self._build_model_and_state()
        self._build_data_and_rewards()
        try:
            self.worker = RolloutWorker(cfg, self.model_cfg, self.mesh, self.formatter,
                                        self.tokenizer, self.pool, stop_token_ids=self.stop_ids)
            self.ckpt = Checkpointer(ckpt_dir, keep_last=cfg.checkpoint.keep_last,
                                     async_save=cfg.checkpoint.async_save)
            self.counters = Counters()
            self._train_steps: dict[tuple, Any] = {}
            self._saved_step: int | None = None
            resume_step = None
            if resume:
                resume_step = self._restore()
                self._saved_step = resume_step
                if self.boundary_records:  # changed boundary settings fail before any write
                    from prorl_jax.rl import boundary

                    boundary.stored(self.run_dir, "base", cfg, self.boundary_records)
            if self.primary:
                write_config(self.run_dir, cfg)
                self.metrics = MetricsLogger(self.run_dir, cfg.logging, resume_step=resume_step,
                                             run_config=to_dict(cfg))
            else:
                self.metrics = _NoMetrics()
        except BaseException:
            self.pool.close()
            raise

    # ------------------------------------------------------------------ construction

    def _build_model_and_state(self) -> None:
        """The mesh, the policy params (loaded or a random init), the optimizer and the
        train state."""
        from prorl_jax.model import hf
        from prorl_jax.sharding import TRAIN_RULES, make_mesh

        cfg = self.cfg
        m = cfg.mesh
        self.mesh = make_mesh(m.data, m.fsdp, m.tensor) if m.data * m.fsdp * m.tensor > 1 else None
        if cfg.model.path is not None:
            # Under a mesh every tensor is read straight into its training sharding.
            model_cfg, params = hf.load_hf(self.model_dir, dtype=cfg.model.param_dtype,
                                           mesh=self.mesh, rules=TRAIN_RULES)
        else:
            from prorl_jax.model import qwen
            from prorl_jax.rl.plan import model_config_for

            model_cfg = model_config_for(cfg)
            params = qwen.init_params(model_cfg, jax.random.key(cfg.seed), mesh=self.mesh,
                                      rules=TRAIN_RULES)
        self.model_cfg = model_cfg.replace(**cfg.model.numerics())
        check_positions(cfg, self.model_cfg)
        self.optimizer = state_lib.make_optimizer(cfg.optim)
        self.state = state_lib.init_train_state(params, self.optimizer)

    def _build_data_and_rewards(self) -> None:
        """The tokenizer and stop ids, the chat formatter, the train / validation data and
        the reward pool."""
        from prorl_jax import data as data_lib
        from prorl_jax import rewards
        from prorl_jax.tokenizer import load_tokenizer, stop_token_ids

        cfg, model_cfg = self.cfg, self.model_cfg

        self.tokenizer = load_tokenizer(self.model_dir)
        if cfg.model.path is None and len(self.tokenizer) > model_cfg.vocab_size:
            raise ConfigError(f"model.tokenizer: {self.model_dir} has {len(self.tokenizer)} tokens, "
                              f"more than the model's vocab_size {model_cfg.vocab_size}")
        # Rollouts and validation stop where `prorl-jax eval` and `generate` stop.
        self.stop_ids = stop_token_ids(self.model_dir, self.tokenizer, model_cfg)
        candidates = (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                      model_cfg.eos_token_id, self.stop_ids[0])
        self.pad_id = int(next(t for t in candidates if t is not None))
        self.formatter = data_lib.ChatFormatter(self.tokenizer, cfg.data.suffixes or None,
                                                cfg.sampling.max_prompt_tokens,
                                                use_chat_template=cfg.data.use_chat_template)
        check_chat_template(self.formatter, self.model_dir)
        # The held-out prompts come first: training data whose prompt text is one of them
        # is left out (data.exclude_val_prompts), so held-out stays held out.
        self.val_records, self.boundary_records, held_out = [], [], frozenset()
        if cfg.data.val_sources:
            val = data_lib.build_iterator(cfg.data, split="val")
            if cfg.data.exclude_val_prompts:
                held_out = frozenset(r.prompt for src in val.sources for r in src)
            first = val.next_batch(max(cfg.validation.num_prompts, cfg.boundary.num_prompts))
            self.val_records = first[:cfg.validation.num_prompts]
            # Distinct prompts only: per-prompt verdicts are keyed by record id.
            self.boundary_records = list({str(r.id): r for r in
                                          first[:cfg.boundary.num_prompts]}.values())
            too_long = sum(self.formatter.encode(r) is None for r in self.boundary_records)
            if too_long:  # the comparison needs every prompt: fail before anything is written
                raise ConfigError(f"boundary.num_prompts: {too_long} of the first "
                                  f"{len(self.boundary_records)} held-out prompts are longer "
                                  f"than sampling.max_prompt_tokens "
                                  f"({cfg.sampling.max_prompt_tokens}); raise it or lower "
                                  f"boundary.num_prompts")
        self.iterator = data_lib.build_iterator(cfg.data, split="train", exclude_prompts=held_out)
        self.pool = rewards.RewardPool(cfg.rewards.num_workers, cfg.rewards.timeout_s,
                                       code_timeout_s=cfg.rewards.code_timeout_s,
                                       preload=_domains(cfg))

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {"model_config": self.model_cfg.to_hf_config(),
                "data_iterator": self.iterator.state_dict(),
                "counters": dataclasses.asdict(dataclasses.replace(
                    self.counters, dropped_prompts=self.worker.dropped_prompts))}

    def _split_state(self):
        s = self.state
        return s.params, {"step": s.step, "opt_state": s.opt_state, "ref_params": s.ref_params}

    def save(self) -> None:
        """Checkpoints the current step (once: the state of a step never changes)."""
        step = int(self.state.step)
        if step == self._saved_step:
            return
        params, rest = self._split_state()
        self.ckpt.save(step, params, rest, self._meta())
        self._saved_step = step

    def _restore(self) -> int:
        abstract = lambda t: jax.tree.map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), t)
        params_t, rest_t = self._split_state()
        rest_t = abstract(rest_t)
        step = resolve_step(self.ckpt.directory, self.resume_step)
        # Orbax restores whole trees only; older checkpoints also hold the PRNG key that
        # TrainState no longer has: read it along, then drop it.
        for key, md in self.ckpt.saved_state(step).items():
            if key in LEGACY_STATE_KEYS:
                rest_t[key] = jax.ShapeDtypeStruct(md.shape, md.dtype,
                                                   sharding=rest_t["step"].sharding)
        params, rest, meta = self.ckpt.restore(step, params_target=abstract(params_t),
                                               state_target=rest_t)
        self.state = state_lib.TrainState(step=rest["step"], params=params,
                                          opt_state=rest["opt_state"],
                                          ref_params=rest["ref_params"])
        self.iterator.load_state_dict(meta["data_iterator"])
        known = {f.name for f in dataclasses.fields(Counters)}
        self.counters = Counters(**{k: v for k, v in meta["counters"].items() if k in known})
        self.worker.dropped_prompts = self.counters.dropped_prompts
        step = int(self.state.step)
        self.console(f"resumed {self.run_dir} at step {step}")
        return step

    # ------------------------------------------------------------------ resets

    def reset_reference(self, reason: str) -> None:
        """Saves the pre-reset state, then reference := policy (and optimizer re-init)."""
        step = int(self.state.step)
        params, rest = self._split_state()
        snap = Checkpointer(self.run_dir / "pre_reset", keep_last=None, async_save=False)
        snap.save(step, params, rest, {**self._meta(), "reason": reason})
        snap.close()
        self.state = state_lib.reset_reference(
            self.state, self.optimizer, reset_optimizer=self.cfg.reference_reset.reset_optimizer)
        self.counters.kl_streak = 0
        self.counters.resets.append({"step": step, "reason": reason})
        log.info("reference reset at step %d (%s)", step, reason)

    def _kl_streak_after(self, m: dict) -> int:
        """The KL-dominance streak including step metrics `m` (unchanged when not tracked)."""
        rr = self.cfg.reference_reset
        if not (rr.kl_fraction > 0 and "kl" in m):
            return self.counters.kl_streak
        dominated = self.cfg.rl.kl_coef * m["kl"] > rr.kl_fraction * abs(m.get("pg_loss", 0.0))
        return self.counters.kl_streak + 1 if dominated else 0

    def _reset_due(self, step: int, m: dict) -> str | None:
        """Why the reference is reset after `step` (None: not now). Changes nothing: the
        caller updates the KL streak and the validation history first."""
        rr = self.cfg.reference_reset
        if rr.every_steps and step % rr.every_steps == 0 and step < self.cfg.steps:
            return f"every {rr.every_steps} steps"
        if rr.kl_fraction > 0 and "kl" in m and self.counters.kl_streak >= rr.kl_patience:
            return f"KL term above {rr.kl_fraction} of the policy loss for {rr.kl_patience} steps"
        hist = self.counters.val_history
        if rr.val_patience and "val/reward/mean" in m and len(hist) > rr.val_patience:
            best_before = max(h for h in hist[:-rr.val_patience])
            if max(hist[-rr.val_patience:]) <= best_before:
                return f"validation reward did not improve for {rr.val_patience} evaluations"
        return None

    # ------------------------------------------------------------------ one step

    def _device(self, x: np.ndarray, batch_axis: int = 0):
        """Host array -> device, batch dim over ('data', 'fsdp') under a mesh. Every process
        holds the whole host batch and places only the shards of its own devices."""
        if self.mesh is None:
            return jnp.asarray(x)
        from prorl_jax.sharding import TRAIN_RULES, shard_batch

        axes = [None] * x.ndim
        axes[batch_axis] = "batch"
        return shard_batch(x, self.mesh, TRAIN_RULES, axes)

    def _train_step_fn(self, prompt_len: int | None):
        """The jitted update: PackedStep (prompt_len None) or the padded scan step."""
        key = (PackedStep.cache_key(self.cfg.rl) if prompt_len is None else self.cfg.rl,
               prompt_len)
        fn = self._train_steps.get(key)
        if fn is None:
            if prompt_len is None:
                fn = PackedStep(self.model_cfg, self.cfg.rl, self.optimizer,
                                temperature=self._temperature, mesh=self.mesh)
            else:
                fn = make_train_step(self.model_cfg, self.cfg.rl, self.optimizer,
                                     prompt_len=prompt_len, temperature=self._temperature,
                                     mesh=self.mesh)
            self._train_steps[key] = fn
        return fn

    @property
    def _temperature(self) -> float:
        # verl computes training logprobs at the rollout temperature; greedy rollouts -> 1.
        return self.cfg.sampling.temperature or 1.0

    def _logprobs(self, params, mb: dict, prompt_len: int | None, with_entropy: bool = False):
        """Logprobs (and entropies) of one mini-batch's micro-batch(es), kept on device:
        [b, T] for a packed micro-batch, [M, b, R] for a padded mini-batch."""
        kw = dict(temperature=self._temperature, with_entropy=with_entropy, mesh=self.mesh)
        if prompt_len is None:
            return batch_packed_logprobs(self.model_cfg, params, mb["tokens"], mb["segment_ids"],
                                         mb["targets"], mb["columns"], **kw)
        outs = [batch_logprobs(self.model_cfg, params, mb["tokens"][m], mb["attention_mask"][m],
                               prompt_len=prompt_len, **kw)
                for m in range(mb["tokens"].shape[0])]
        if not with_entropy:
            return jnp.stack(outs)
        return tuple(jnp.stack(o) for o in zip(*outs))

    def _entropy(self, tb, mb: dict, entropy, k: int):
        """Mini-batch k's share of the step's aggregated rollout entropy (device scalar)."""
        if tb.packed:
            return tb.scales[k] * jnp.sum(entropy * mb["weights"] * mb["loss_mask"])
        per_micro = jnp.stack([losses.aggregate(entropy[m], mb["response_mask"][m],
                                                self.cfg.rl.loss_agg)
                               for m in range(entropy.shape[0])])
        return tb.scales[k] * jnp.sum(per_micro * mb["weight"])

    def update(self, groups, step: int) -> dict:
        """PPO epochs over the step's mini-batches; returns averaged metrics.

        The train batch is built and placed on the device(s) once (rl/batch.py); old and
        reference logprobs are computed there and stay there; every epoch visits the same
        mini-batches (one permutation of the groups per step).
        """
        tb = self._make_batch(groups, step)
        entropy, mismatch = self._old_and_ref_logprobs(tb)
        collected = self._ppo_epochs(tb)
        return self._collect_metrics(collected, entropy, mismatch, tb, step)

    def _make_batch(self, groups, step: int):
        """The step's train batch (one permutation of the groups), placed once."""
        cfg = self.cfg
        order = np.random.default_rng([cfg.seed, step]).permutation(groups.num_groups)
        shards = 1 if self.mesh is None else cfg.mesh.data * cfg.mesh.fsdp
        return batching.train_batch(cfg, groups, order, self.pad_id, place=self._device,
                                    shards=shards)

    def _old_and_ref_logprobs(self, tb):
        """Fills every micro-batch's old and reference logprobs (on device) and the
        rollout/trainer mismatch inputs (rl/old_logprobs.py).

        Returns (entropy, mismatch): the rollout policy's aggregated entropy (device scalar;
        None with rl.old_logprobs=sampler, which skips the pass it comes from) and the
        per-micro-batch mismatch sums.
        """
        rl = self.cfg.rl
        entropy_parts, mismatch = [], []
        for k, micros in enumerate(tb.minibatches):
            for mb in micros:
                if rl.old_logprobs == "recompute":
                    mb["old_logprobs"], ent = self._logprobs(self.state.params, mb,
                                                             tb.prompt_len, with_entropy=True)
                    entropy_parts.append(self._entropy(tb, mb, ent, k))
                else:  # the rollout's own: no forward pass
                    mb["old_logprobs"] = mb["sampler_logprobs"]
                mb["ref_logprobs"] = (self._logprobs(self.state.ref_params, mb, tb.prompt_len)
                                      if rl.kl_coef != 0 else mb["old_logprobs"])
                mismatch.append(old_logprobs.attach(rl, mb))
        entropy = sum(entropy_parts) if entropy_parts else None
        return entropy, [s for s in mismatch if s is not None]

    def _ppo_epochs(self, tb) -> list[dict]:
        """rl.ppo_epochs passes over the mini-batches; updates the state, returns each
        update's metrics (device scalars)."""
        train_step = self._train_step_fn(tb.prompt_len)
        params, opt_state = self.state.params, self.state.opt_state
        collected: list[dict] = []
        for _ in range(self.cfg.rl.ppo_epochs):
            for micros in tb.minibatches:
                if tb.packed:
                    params, opt_state, m = train_step.step(params, opt_state, micros)
                else:
                    mb = dict(micros[0], weight=jnp.asarray(micros[0]["weight"]))
                    params, opt_state, m = train_step(params, opt_state, mb)
                collected.append(m)
        self.state = self.state.replace(params=params, opt_state=opt_state)
        return collected

    def _collect_metrics(self, collected: list[dict], entropy, mismatch, tb,
                         step: int) -> dict:
        """The step's update metrics: means over the updates (maxima for "...max" keys)."""
        stacked = {k: np.asarray([float(m[k]) for m in collected]) for k in collected[0]}
        out = {k: float(v.max() if combines_by_max(k) else v.mean()) for k, v in stacked.items()}
        out["skipped"] = float(stacked["skipped"].sum())
        out.update(old_logprobs.step_metrics(self.cfg.rl, mismatch, collected))
        if entropy is not None:  # recompute mode: from the old-logprob pass
            # The rollout policy's entropy (at the rollout temperature), same aggregation
            # as the loss.
            out["entropy"] = float(entropy)
        out["tokens/packing_efficiency"] = tb.real_tokens / max(tb.slots, 1)
        self.counters.skipped_updates += int(out["skipped"])
        if out["skipped"]:
            log.warning("step %d: %d update(s) skipped for a non-finite loss or gradient",
                        step, int(out["skipped"]))
        return out

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict:
        if not self.val_records:
            return {}
        from prorl_jax.eval.runner import validate_records

        v = self.cfg.validation
        return validate_records(self.model_cfg, self.state.params, self.formatter,
                                self.tokenizer,
                                self.val_records, self.pool, n=v.n, temperature=v.temperature,
                                top_p=v.top_p, max_new_tokens=v.max_new_tokens,
                                stop_token_ids=self.stop_ids, seed=self.cfg.seed,
                                mesh=self.mesh,
                                max_batch_tokens=self.cfg.sampling.max_batch_tokens or None,
                                engine=self.cfg.sampling.engine,
                                decode_slots=self.cfg.sampling.decode_slots,
                                steps_per_sync=self.cfg.sampling.steps_per_sync)

    def boundary_samples(self, label: str) -> list | None:
        """The boundary samples of the current policy as `label` ("base" / "final"), saved
        to RUN_DIR/boundary/samples (rl/boundary.py); None when boundary is off."""
        if not self.boundary_records:
            return None
        from tqdm.auto import tqdm

        from prorl_jax.eval.runner import evaluate_records, tokenizer_decoder
        from prorl_jax.rl import boundary
        from prorl_jax.sampling import SamplingParams

        b, s = self.cfg.boundary, self.cfg.sampling
        sampling = SamplingParams(temperature=b.temperature, top_p=b.top_p,
                                  max_new_tokens=b.max_new_tokens, n=b.n,
                                  stop_token_ids=tuple(self.stop_ids))
        bar = tqdm(total=len(self.boundary_records), desc=f"boundary ({label})", unit="prompt",
                   disable=not (self.cfg.logging.progress and self.primary), dynamic_ncols=True)
        results = evaluate_records(
            self.model_cfg, self.state.params, self.boundary_records,
            encode=self.formatter.encode, decode=tokenizer_decoder(self.tokenizer),
            score=self.pool, sampling=sampling, seed=self.cfg.seed, mesh=self.mesh,
            batch_prompts=64, max_batch_tokens=s.max_batch_tokens or None, progress=bar,
            engine=s.engine, decode_slots=s.decode_slots, steps_per_sync=s.steps_per_sync)
        bar.close()
        if self.primary:
            boundary.save(self.run_dir, label, self.cfg, results)
        return results

    def _boundary_report(self) -> dict | None:
        """The final policy's boundary samples and the report (None when off, or when the
        run started without them)."""
        if not self.boundary_records:
            return None
        from prorl_jax.rl import boundary

        base = boundary.stored(self.run_dir, "base", self.cfg, self.boundary_records)
        if base is None:
            log.warning("boundary: %s has no base samples (the run started with "
                        "boundary.num_prompts 0), so there is no boundary report", self.run_dir)
            return None
        final = self.boundary_samples("final")
        if not self.primary:
            return None
        train_prompts = {r.prompt for src in self.iterator.sources for r in src}
        data_overlap = boundary.overlap(self.boundary_records, train_prompts,
                                        boundary.warmup_prompts(self.model_dir))
        return boundary.write(self.run_dir, base, final, self.cfg, data_overlap,
                              excluded=self.iterator.excluded)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        try:
            return self._run()
        except BaseException:
            self.close()
            raise

    def _run(self) -> dict:
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg = self.cfg
        start = int(self.state.step)
        previous = _read_summary(self.run_dir)
        if start >= cfg.steps and previous.get("steps") == start and not self.manual_reset:
            # A finished run resumed as it is: nothing to train, nothing to rewrite.
            self.console(f"{self.run_dir} already finished at step {start} (steps: {cfg.steps}); "
                         f"nothing to do. Train further with --resume {self.run_dir} "
                         f"--set steps=N (N > {start})")
            self.close()
            return {**previous, "already_finished": True}
        summary: dict[str, Any] = {"run_dir": str(self.run_dir),
                                   "start_step": previous.get("start_step", start)}
        if any(self.iterator.excluded.values()):  # logged once the run has started
            log.info("left out of the training data, as held-out prompts: %s",
                     ", ".join(f"{n} {c}" for n, c in self.iterator.excluded.items() if c))
        if self.manual_reset:
            self.reset_reference("manual (--reset-reference)")
        if self.val_records and start == 0:
            before = self.validate()
            self.counters.val_before = before
            self.counters.val_history.append(before.get("val/reward/mean", 0.0))
            self.metrics.write(0, before)
        if self.boundary_records and start == 0:
            self.boundary_samples("base")  # before step 1: the base, never a reset reference
        if self.counters.val_before is None and "val_before" in previous:
            self.counters.val_before = previous["val_before"]  # run from before the counter
        if self.counters.val_before is not None:
            summary["val_before"] = self.counters.val_before
        progress = _progress(cfg, start, enabled=self.primary)
        stop = _StopFlag(on_force_exit=self.pool.kill)
        last: dict = {}
        # Log lines (resets, warnings) go above the progress bar instead of through it.
        with stop, logging_redirect_tqdm(loggers=[logging.getLogger()]):
            step = start
            while step < cfg.steps and stop.signal is None:
                last = self._one_step(step)
                step = int(self.state.step)
                self.metrics.write(step, last)
                _inject_fault(step)
                progress.update(1)
                progress.set_postfix(reward=f"{last['reward/mean']:.3f}",
                                     kl=f"{last.get('kl', 0):.2e}")
                if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                    self.save()
            progress.close()
            if stop.signal is not None:
                self.save()
                self.ckpt.wait()
                summary["stopped_by"] = stop.signal
                summary["exit_code"] = stop.exit_code
                self.console(f"stopped by {stop.signal} at step {step}; checkpoint saved in "
                             f"{self.ckpt.directory}; continue with --resume {self.run_dir}")
                self.close()
                return summary
        self.save()
        self.ckpt.wait()
        if self.val_records:
            after = {k: v for k, v in last.items() if k.startswith("val/")}
            if not after:  # resumed at the last step (killed before the end of the run)
                after = self.validate()
                self.metrics.write(int(self.state.step), after)
            summary["val_after"] = after
        report = self._boundary_report()
        if report is not None:
            summary["boundary"] = report
        if cfg.checkpoint.export_hf:
            from prorl_jax.model.hf import save_hf

            save_hf(self.run_dir / "hf", self.model_cfg, self.state.params,
                    tokenizer_dir=self.model_dir)
            summary["hf_dir"] = str(self.run_dir / "hf")
        summary["steps"] = int(self.state.step)
        summary["resets"] = list(self.counters.resets)
        summary["empty_steps"] = int(self.counters.empty_steps)
        if self.primary:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.close()
        return summary

    def _one_step(self, step: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        groups, m = self.worker.collect(self.state.params, self.iterator,
                                        lambda i: seed_for(cfg.seed, step, i))
        t1 = time.perf_counter()
        self._count_empty(step + 1, m)
        if groups is not None:
            m.update(self.update(groups, step))
        t2 = time.perf_counter()
        self.state = self.state.replace(step=self.state.step + 1)
        step += 1
        m["time/train"] = t2 - t1
        m["time/step"] = t2 - t0
        m["tokens_per_second"] = m["tokens/generated"] / max(t2 - t0, 1e-9)
        m["epoch"] = getattr(self.iterator, "epoch", 0)
        every = cfg.validation.every_steps
        # The last step always validates, so the final numbers are in metrics.jsonl and
        # TensorBoard like every other validation (and in summary.json as val_after).
        if self.val_records and (step == cfg.steps or (every and step % every == 0)):
            v = self.validate()
            m.update(v)
            self.counters.val_history.append(v.get("val/reward/mean", 0.0))
        self.counters.kl_streak = self._kl_streak_after(m)
        reason = self._reset_due(step, m) if step < cfg.steps else None
        if reason is not None:
            self.reset_reference(reason)
            m["reference_reset"] = True
        return m

    def _count_empty(self, step: int, m: dict) -> None:
        """Warns on a step where every generated group got identical rewards (zero
        advantages: nothing to learn), and stops after rl.max_empty_steps in a row."""
        if m["filtered_fraction"] < 1.0:
            self.counters.empty_streak = 0
            return
        self.counters.empty_steps += 1
        self.counters.empty_streak += 1
        streak = self.counters.empty_streak
        m["empty_step"] = True
        log.warning("step %d: all %d generated groups got identical rewards within the group "
                    "(nothing to learn from; %d such step(s) in a row)", step,
                    m["groups/generated"], streak)
        limit = self.cfg.rl.max_empty_steps
        if limit and streak >= limit:
            raise DynamicSamplingError(
                f"steps {step - streak + 1}-{step}: every generated group got identical rewards "
                f"({streak} steps in a row, rl.max_empty_steps={limit}), so there was nothing "
                f"to train on. Check sampling.temperature (0 samples every group identically) "
                f"and that the model solves some prompts; rl.max_empty_steps=0 only warns")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ckpt.close()
        self.pool.close()
        self.metrics.close()


def _read_summary(run_dir: pathlib.Path) -> dict:
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _inject_fault(step: int) -> None:
    """Test hook: PRORL_JAX_FAULT_AFTER_STEP="3:KILL" sends SIGKILL to this process right
    after step 3 is logged (before its checkpoint); "1:TERM" sends SIGTERM. Crash and
    signal tests use it to interrupt a run at an exact point."""
    spec = os.environ.get("PRORL_JAX_FAULT_AFTER_STEP")
    if not spec:
        return
    at, _, name = spec.partition(":")
    if int(at) == step:
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'KILL'}"))


def _model_dir(cfg: TrainConfig) -> pathlib.Path:
    """The checkpoint directory of model.path, or the tokenizer directory of a random init."""
    m = cfg.model
    if m.path is not None:
        return pathlib.Path(resolve_model_dir(m.path))
    if m.tokenizer is None:
        raise ConfigError("model.tokenizer: a random init (model.preset / model.config without "
                          "model.path) needs a tokenizer directory")
    if m.preset is None and m.config is None:
        raise ConfigError("model: give model.path, or model.preset / model.config with "
                          "model.tokenizer")
    return pathlib.Path(resolve_model_dir(m.tokenizer, "model.tokenizer directory"))


def _domains(cfg: TrainConfig) -> tuple[str, ...]:
    """Reward domains a run can meet, so workers import only those verifiers up front."""
    from prorl_jax.rewards import DOMAINS

    named = {s.domain for s in (*cfg.data.sources, *cfg.data.val_sources) if s.domain}
    named |= {"reasoning_gym" for s in (*cfg.data.sources, *cfg.data.val_sources)
              if s.kind == "reasoning_gym"}
    unknown_mix = any(s.domain is None and s.kind != "reasoning_gym"
                      for s in (*cfg.data.sources, *cfg.data.val_sources))
    return DOMAINS if unknown_mix or not named else tuple(sorted(named))


def _progress(cfg: TrainConfig, start: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="ProRL", unit="step",
                disable=not (cfg.logging.progress and enabled), dynamic_ncols=True)


def _quiet(*args, **kwargs) -> None:
    """The console of processes other than 0: they print nothing (docs/distributed.md)."""


class _NoMetrics:
    """The metrics logger of processes other than 0: process 0 alone writes metrics."""

    def write(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass
