"""Sample and score: prompt token ids -> sampled rows, decoded and scored by the verifiers.

The one path the trainer's rollouts (rl.rollout.RolloutWorker.sample) and evaluation
(eval.runner.evaluate_records) share. With the continuous engine each row is decoded to
text as soon as it finishes and handed to a scoring thread, which sends what has queued
up to the verifiers while decoding continues; only the wait after the last row remains.
Verifier results do not depend on when or in which batches they are asked, so the scores
equal those of scoring everything at the end.

Several processes (one global mesh): every process calls sample_and_score with the same
prompts and gets every row (the sampler gathers them), then scores only its own share
(`distributed.split_rows`) with its own verifiers, so verification scales with the hosts;
the scores are gathered at the end and every process returns the same `Scored`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from prorl_jax import distributed
from prorl_jax.sampling.settings import DEFAULT_ENGINE, DEFAULT_STEPS_PER_SYNC


@dataclasses.dataclass
class Scored:
    """Rows of one sample-and-score call, prompt-major (R = prompts x n).

    tokens, logprobs, lengths, finished: as sampler.GenerationOutput.
    texts:       R decoded completions (stop token excluded).
    scores:      float32 [R] verifier rewards.
    time_rollout: seconds from the call to the last row sampled (row decoding included).
    time_reward:  seconds spent waiting for the verifiers after that.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    texts: list
    scores: np.ndarray
    time_rollout: float
    time_reward: float


def completion_ids(tokens: np.ndarray, length: int, finished: bool) -> list[int]:
    """The tokens of a completion's text: the stop token ends a row but is not text."""
    return [int(t) for t in tokens[:int(length) - int(bool(finished))]]


class _Scorer:
    """A thread that scores (row, item) pairs as they arrive, in batches of what queued."""

    def __init__(self, score: Callable[[list[tuple]], Sequence[float]], num_rows: int):
        self.scores = np.zeros(num_rows, np.float32)
        self._score = score
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prorl-scorer", daemon=True)
        self._thread.start()

    def put(self, row: int, item: tuple) -> None:
        self._queue.put((row, item))

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                batch.pop()
                stop = True
            if not batch or self._error is not None:
                continue
            try:
                rewards = self._score([item for _, item in batch])
                for (row, _), r in zip(batch, rewards):
                    self.scores[row] = float(r)
            except BaseException as e:  # re-raised in the caller's thread by finish()
                self._error = e

    def finish(self) -> np.ndarray:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.scores


def sample_and_score(model_cfg, params, prompt_ids: Sequence, sampling, *,
                     item: Callable[[int, str], tuple], decode: Callable[[list[int]], str],
                     score, seed: int = 0, mesh=None, max_batch_tokens: int | None = None,
                     engine: str = DEFAULT_ENGINE, decode_slots: int | None = None,
                     steps_per_sync: int = DEFAULT_STEPS_PER_SYNC,
                     decode_params=None, stats: dict | None = None) -> Scored:
    """Sample `sampling.n` completions per prompt, decode and score each.

    Args:
      model_cfg, params, prompt_ids, sampling, seed, mesh, max_batch_tokens, engine,
        decode_slots, steps_per_sync, decode_params: as sampling.generate.
      item: (row, text) -> the (domain, completion, ground_truth) triple to score.
      decode: completion token ids (stop token excluded) -> text.
      score: a RewardPool (its .score) or a function [(domain, completion, ground_truth)]
        -> [reward].
      stats: continuous engine only: filled as generate_stream's.
    Returns:
      Scored; under several processes identical on every process (each scored its
      `distributed.split_rows` share: `item` and `score` see only those rows there).
    """
    from prorl_jax.sampling import engine as engine_mod
    from prorl_jax.sampling.settings import check_engine_settings

    check_engine_settings(engine, decode_slots, steps_per_sync)
    score_fn = score.score if hasattr(score, "score") else score
    num_rows = len(prompt_ids) * sampling.n
    mine = distributed.split_rows(num_rows)  # all rows in a single process
    t0 = time.perf_counter()
    texts: list = [None] * num_rows
    if engine == "static":
        out = engine_mod.generate(model_cfg, params, prompt_ids, sampling, seed=seed, mesh=mesh,
                                  max_batch_tokens=max_batch_tokens, engine="static",
                                  decode_params=decode_params)
        for r in range(num_rows):
            texts[r] = decode(completion_ids(out.tokens[r], out.lengths[r], out.finished[r]))
        t1 = time.perf_counter()
        scores = np.zeros(num_rows, np.float32)
        scores[mine] = np.asarray(score_fn([item(r, texts[r]) for r in range(num_rows)[mine]]),
                                  np.float32)
    else:
        stream = engine_mod.generate_stream(
            model_cfg, params, prompt_ids, sampling, seed=seed, mesh=mesh,
            max_batch_tokens=max_batch_tokens, decode_slots=decode_slots,
            steps_per_sync=steps_per_sync, decode_params=decode_params, stats=stats)
        scorer = _Scorer(score_fn, num_rows)
        rows = []
        try:
            for row in stream:
                text = decode(completion_ids(row.tokens, row.length, row.finished))
                texts[row.index] = text
                if mine.start <= row.index < mine.stop:
                    scorer.put(row.index, item(row.index, text))
                rows.append(row)
        finally:
            t1 = time.perf_counter()
            scores = scorer.finish()
        out = engine_mod.collect(rows, num_rows, sampling.max_new_tokens)
    if distributed.process_count() > 1:
        scores = distributed.gather_rows(scores[mine], mine, num_rows)
    t2 = time.perf_counter()
    return Scored(tokens=out.tokens, logprobs=out.logprobs, lengths=out.lengths,
                  finished=out.finished, texts=texts, scores=scores, time_rollout=t1 - t0,
                  time_reward=t2 - t1)
