"""A persistent pool of reward worker processes with per-item timeouts and crash recovery.

Workers are spawned (not forked: the trainer runs JAX threads) once and kept across training
steps because starting one and importing Math-Verify / Reasoning Gym takes seconds. Each
worker scores one item at a time; the parent enforces a wall-clock deadline per item. A
verifier that raises scores 0 and the worker lives on; one that hangs or kills its worker
scores 0, the worker is killed and replaced. Every such item is counted in `errors` and
logged with its reason.
"""

import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from multiprocessing.connection import wait
from typing import Any, NamedTuple

from prorl_jax.errors import ConfigError
from prorl_jax.rewards import registry
from prorl_jax.rewards.code_reward import DEFAULT_TIMEOUT_S as CODE_TIMEOUT_S
from prorl_jax.rewards.sandbox import STARTUP_GRACE_S

logger = logging.getLogger(__name__)

# Consecutive workers that die before becoming ready before the pool gives up.
_MAX_START_FAILURES = 3


class ItemInfo(NamedTuple):
    """Why an item got less than full reward: `reason` (None if nothing notable) and whether
    it was an error (verifier raised, hung or crashed; counted in RewardPool.errors)."""

    reason: str | None
    error: bool = False


def _worker_main(conn, preload: Sequence[str], extra: dict[str, str]) -> None:
    # The trainer handles Ctrl-C; workers are torn down by close().
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for domain in preload:
        registry.warm_up(domain)
    conn.send(("ready",))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        index, domain, completion, ground_truth = job
        try:
            verdict = registry.score_one(domain, completion, ground_truth, extra)
            conn.send(("ok", index, verdict.reward, verdict.reason))
        except BaseException as e:  # any verifier failure scores 0; the worker lives on
            conn.send(("error", index, 0.0, f"{type(e).__name__}: {e}"[:500]))


class _Worker:
    def __init__(self, ctx, preload, extra, start_timeout_s):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn, preload, extra),
                                   daemon=True, name="prorl-reward-worker")
        self.process.start()
        child_conn.close()
        self.ready = False
        self.job: int | None = None
        self.deadline = time.monotonic() + start_timeout_s

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """Persistent worker processes scoring (domain, completion, ground_truth) items.

    Args:
      num_workers: worker processes (>= 1).
      timeout_s: wall-clock limit per item; code items get at least their sandbox budget
        plus start-up margin.
      code_timeout_s: time budget for all tests of one code item (the paper uses 5 s).
      preload: domains whose libraries each worker imports before taking work.
      extra_domains: user verifiers {domain: "module:function"}.
      start_timeout_s: how long a worker may take to start and preload.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 10.0, *,
                 code_timeout_s: float = CODE_TIMEOUT_S, preload: Iterable[str] = registry.DOMAINS,
                 extra_domains: Mapping[str, str] | None = None, start_timeout_s: float = 120.0):
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ConfigError(f"RewardPool num_workers must be a positive int, got {num_workers!r}")
        if not timeout_s > 0 or not code_timeout_s > 0:
            raise ConfigError(f"RewardPool timeouts must be > 0, got {timeout_s}, {code_timeout_s}")
        self._extra = registry.check_extra(extra_domains)
        self._preload = tuple(preload)
        for domain in self._preload:
            registry.detailed(domain, self._extra)
        self.timeout_s = float(timeout_s)
        self.code_timeout_s = float(code_timeout_s)
        self._start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self.errors = 0
        self._start_failures = 0
        self._closed = False
        self._workers = [self._spawn() for _ in range(num_workers)]

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._preload, self._extra, self._start_timeout_s)

    def _item_timeout(self, domain: str) -> float:
        if domain == "code":
            return max(self.timeout_s, self.code_timeout_s + STARTUP_GRACE_S + 1.0)
        return self.timeout_s

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        new = self._spawn()
        self._workers[self._workers.index(worker)] = new
        return new

    def score(self, items: Sequence[tuple[str, str, Any]], return_info: bool = False):
        """Score items in parallel; results in input order.

        Args:
          items: (domain, completion, ground_truth) triples.
          return_info: also return one ItemInfo per item.

        Returns:
          list of float rewards in [0, 1], or (rewards, infos) when return_info.

        Raises:
          ConfigError: an item names an unknown domain (checked before any scoring).
        """
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        items = [tuple(item) for item in items]
        for i, item in enumerate(items):
            if len(item) != 3:
                raise ConfigError(f"reward item {i} must be (domain, completion, ground_truth)")
            registry.detailed(item[0], self._extra)
        rewards: list[float | None] = [None] * len(items)
        infos: list[ItemInfo | None] = [None] * len(items)
        queue = deque(range(len(items)))
        remaining = len(items)

        def finish(i, reward, info):
            nonlocal remaining
            rewards[i], infos[i] = reward, info
            remaining -= 1
            if info.error:
                self.errors += 1
                logger.warning("reward item %d (%s) scored 0: %s", i, items[i][0], info.reason)

        while remaining:
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.job is None and queue:
                    i = queue.popleft()
                    try:
                        w.conn.send((i, *items[i]))
                    except (OSError, ValueError):
                        queue.appendleft(i)
                        self._replace(w)
                        continue
                    w.job, w.deadline = i, now + self._item_timeout(items[i][0])
            waiting = [w for w in self._workers if w.job is not None or not w.ready]
            wake = min((w.deadline for w in waiting), default=now + 1.0)
            for conn in wait([w.conn for w in self._workers], timeout=max(0.0, min(wake - now, 1.0))):
                w = next(w for w in self._workers if w.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._on_death(w, finish)
                    continue
                if msg[0] == "ready":
                    w.ready, self._start_failures = True, 0
                elif msg[1] == w.job:
                    kind, i, reward, reason = msg
                    finish(i, reward, ItemInfo(reason, error=kind == "error"))
                    w.job = None
            now = time.monotonic()
            for w in list(self._workers):
                if now <= w.deadline or (w.ready and w.job is None):
                    continue
                if w.job is not None:
                    finish(w.job, 0.0, ItemInfo(f"timeout: verifier exceeded "
                                                f"{self._item_timeout(items[w.job][0]):g} s", True))
                    self._replace(w)
                else:
                    self._on_death(w, finish)
        return (rewards, infos) if return_info else rewards

    def _on_death(self, worker: _Worker, finish) -> None:
        worker.process.join(timeout=0.5)
        code = worker.process.exitcode
        if worker.job is not None:
            finish(worker.job, 0.0, ItemInfo(f"worker crashed (exit code {code})", True))
        elif not worker.ready:
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                self.close()
                raise RuntimeError(
                    f"reward workers keep failing to start (last exit code {code}); from a "
                    "script, create the pool under `if __name__ == \"__main__\":` (spawned "
                    "workers import the script again, see docs/api.md)")
        self._replace(worker)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()

    def kill(self) -> None:
        """Kill the workers at once, without waiting (a forced exit of the parent)."""
        self._closed = True
        for w in self._workers:
            w.process.kill()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter teardown may have removed what close() needs
            pass


def score_batch(items: Sequence[tuple[str, str, Any]], *, num_workers: int = 2,
                timeout_s: float = 10.0, return_info: bool = False, **pool_kwargs):
    """Score items with a temporary RewardPool (a trainer should keep one RewardPool instead).

    Args:
      items: (domain, completion, ground_truth) triples.
      num_workers: worker processes; 0 scores in this process (no timeouts, no crash isolation).
      timeout_s: wall-clock limit per item.
      return_info: also return one ItemInfo per item.
      **pool_kwargs: further RewardPool arguments.

    Returns:
      list of float rewards in input order (and infos when return_info).
    """
    if num_workers == 0:
        return _score_inline(items, return_info, pool_kwargs.get("extra_domains"))
    domains = {item[0] for item in items}
    pool_kwargs.setdefault("preload", [d for d in registry.DOMAINS if d in domains])
    with RewardPool(num_workers, timeout_s, **pool_kwargs) as pool:
        return pool.score(items, return_info=return_info)


def _score_inline(items, return_info, extra):
    extra = registry.check_extra(extra)
    for item in items:
        registry.detailed(item[0], extra)
    rewards, infos = [], []
    for i, (domain, completion, ground_truth) in enumerate(items):
        try:
            verdict = registry.score_one(domain, completion, ground_truth, extra)
            rewards.append(verdict.reward)
            infos.append(ItemInfo(verdict.reason))
        except Exception as e:  # same policy as the pool: the item scores 0
            logger.warning("reward item %d (%s) scored 0: %s: %s", i, domain, type(e).__name__, e)
            rewards.append(0.0)
            infos.append(ItemInfo(f"{type(e).__name__}: {e}"[:500], True))
    return (rewards, infos) if return_info else rewards
