"""A weighted, seeded, resumable mixture of prompt sources.

An epoch has `epoch_size` slots (default: the total number of records). Source i gets
q_i = its weight's share of the slots (largest-remainder rounding), so the weights hold
exactly per epoch and a batch's composition is a random draw from that plan. The slots are
shuffled afresh every epoch. Each source is read through an endless chain of its own
permutations (one per pass over it), continued across epochs, so a down-weighted source
still cycles through all of its records and an up-weighted one repeats whole passes.

Everything is a pure function of (seed, epoch, position), which is all the state holds:
resuming from `state_dict()` regenerates the same epoch plan and continues with exactly
the records the uninterrupted run would have produced.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from prorl_jax.data.records import Record
from prorl_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
    from prorl_jax.config import DataConfig

log = logging.getLogger(__name__)

STATE_VERSION = 1
_PLAN, _PASS = 1, 2  # RNG stream tags: epoch plans and per-source passes


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Splits `total` slots in proportion to `weights` (largest remainder; sums to total)."""
    exact = total * weights / weights.sum()
    q = np.floor(exact).astype(np.int64)
    rest = np.argsort(-(exact - q), kind="stable")[: total - int(q.sum())]
    q[rest] += 1
    return q


class PromptIterator:
    """Yields batches of records from a weighted mixture; saves and restores its position.

    Args:
      sources: one list of records per source (each non-empty).
      weights: relative weight per source (> 0), normalized over sources.
      seed: the seed of every shuffle.
      shuffle: False keeps each source in file order and interleaves the sources evenly by
        weight (same order every epoch), e.g. for validation.
      names: source names for logs and `source_counts`.
      epoch_size: slots per epoch; 0 = total number of records.
    """

    def __init__(self, sources: Sequence[Sequence[Record]], weights: Sequence[float], *,
                 seed: int = 0, shuffle: bool = True, names: Sequence[str] | None = None,
                 epoch_size: int = 0):
        if not sources or len(sources) != len(weights):
            raise ValueError("need one weight per source and at least one source")
        if any(len(s) == 0 for s in sources):
            raise DataError("a mixture source has no records")
        if any(w <= 0 for w in weights):
            raise ValueError(f"mixture weights must be > 0, got {list(weights)}")
        self.sources = [list(s) for s in sources]
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(sources))]
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.sizes = np.array([len(s) for s in self.sources], np.int64)
        self.weights = np.asarray(weights, np.float64) / float(np.sum(weights))
        self.epoch_size = int(epoch_size) or int(self.sizes.sum())
        self.quotas = _apportion(self.epoch_size, self.weights)
        for name, q in zip(self.names, self.quotas):
            if q == 0:
                log.warning("mixture source %s gets 0 of %d slots per epoch (weight too small)",
                            name, self.epoch_size)
        self._epoch, self._pos = 0, 0
        self._plan_epoch, self._plan = -1, None
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self.fingerprint = self._fingerprint()
        self.skipped: dict[str, int] = dict.fromkeys(self.names, 0)  # bad records per source
        self.excluded: dict[str, int] = dict.fromkeys(self.names, 0)  # held-out prompts dropped

    # ------------------------------------------------------------------ plan

    def _rng(self, tag: int, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, tag, *keys])

    def _pass_perm(self, src: int, pass_no: int) -> np.ndarray:
        key = (src, pass_no)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * len(self.sources):
                self._perm_cache.clear()
            n = int(self.sizes[src])
            self._perm_cache[key] = (self._rng(_PASS, src, pass_no).permutation(n)
                                     if self.shuffle else np.arange(n))
        return self._perm_cache[key]

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, record index) of every slot of `epoch`, in order."""
        if self._plan_epoch == epoch:
            return self._plan
        src = np.repeat(np.arange(len(self.sources)), self.quotas)
        if self.shuffle:
            src = src[self._rng(_PLAN, epoch).permutation(self.epoch_size)]
        else:  # spread each source evenly: its j-th slot sits at (j + 0.5) / q_i
            occ = np.concatenate([np.arange(q) for q in self.quotas])
            src = src[np.lexsort((src, (occ + 0.5) / self.quotas[src]))]
        rec = np.empty(self.epoch_size, np.int64)
        for i in range(len(self.sources)):
            sel = np.nonzero(src == i)[0]
            # The j-th slot of source i in this epoch is its (epoch * q_i + j)-th draw overall,
            # so its records come out in exactly the order of its pass permutations.
            draw = epoch * int(self.quotas[i]) + np.arange(len(sel))
            passes, within = np.divmod(draw, self.sizes[i])
            for p in np.unique(passes):
                m = passes == p
                rec[sel[m]] = self._pass_perm(i, int(p))[within[m]]
        self._plan_epoch, self._plan = epoch, (src, rec)
        return self._plan

    # ------------------------------------------------------------------ iteration

    @property
    def epoch(self) -> int:
        """Completed epochs (0 during the first)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Slots already consumed in the current epoch."""
        return self._pos

    @property
    def samples_seen(self) -> int:
        """Records handed out since the start (over all epochs)."""
        return self._epoch * self.epoch_size + self._pos

    def next_batch(self, n: int) -> list[Record]:
        """Returns the next `n` records, moving into the next epoch when this one ends.

        Args:
          n: batch size (> 0).

        Returns:
          n records; a record repeats only when its source is up-weighted beyond its size
          or a batch spans a pass over its source.
        """
        if n <= 0:
            raise ValueError(f"batch size must be > 0, got {n}")
        out = []
        while len(out) < n:
            src, rec = self._epoch_plan(self._epoch)
            take = min(n - len(out), self.epoch_size - self._pos)
            for s, r in zip(src[self._pos:self._pos + take], rec[self._pos:self._pos + take]):
                out.append(self.sources[int(s)][int(r)])
            self._pos += take
            if self._pos == self.epoch_size:
                self._epoch, self._pos = self._epoch + 1, 0
        return out

    def __iter__(self):
        while True:
            yield self.next_batch(1)[0]

    def source_counts(self, n: int) -> dict[str, int]:
        """How many of the next `n` records come from each source (without consuming them)."""
        counts = dict.fromkeys(self.names, 0)
        epoch, pos, seen = self._epoch, self._pos, 0
        while seen < n:
            src, _ = self._epoch_plan(epoch)
            take = min(n - seen, self.epoch_size - pos)
            for i, c in enumerate(np.bincount(src[pos:pos + take], minlength=len(self.names))):
                counts[self.names[i]] += int(c)
            seen, pos = seen + take, pos + take
            if pos == self.epoch_size:
                epoch, pos = epoch + 1, 0
        return counts

    # ------------------------------------------------------------------ state

    def _fingerprint(self) -> str:
        """Hash of everything the order depends on, to refuse a state from other data."""
        h = hashlib.sha256()
        h.update(repr((STATE_VERSION, self.seed, self.shuffle, self.epoch_size,
                       self.quotas.tolist(), self.sizes.tolist())).encode())
        for s in self.sources:
            for r in s:
                h.update(r.id.encode())
                h.update(b"\0")
        return h.hexdigest()[:16]

    def state_dict(self) -> dict:
        """JSON-serializable position: {"version", "epoch", "position", "fingerprint"}."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "position": self._pos,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict, *, strict: bool = True) -> None:
        """Restores a position saved by `state_dict`.

        Args:
          state: the saved dict.
          strict: refuse a state saved over different data / seed / weights (DataError);
            False only warns and keeps the epoch and position.

        Raises:
          DataError: malformed state, or (strict) a fingerprint mismatch.
        """
        try:
            version, epoch, pos = state["version"], int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"data iterator state is malformed: {state!r}") from None
        if version != STATE_VERSION:
            raise DataError(f"data iterator state has version {version}, expected {STATE_VERSION}")
        if state.get("fingerprint") != self.fingerprint:
            msg = ("data iterator state was saved over different data, seed or weights "
                   f"(fingerprint {state.get('fingerprint')} != {self.fingerprint})")
            if strict:
                raise DataError(msg + "; resuming would not continue the same sequence")
            log.warning("%s; continuing at epoch %d", msg, epoch)
        if epoch < 0 or not 0 <= pos < self.epoch_size:
            raise DataError(f"data iterator state out of range: epoch {epoch}, position {pos} "
                            f"(epoch size {self.epoch_size})")
        self._epoch, self._pos = epoch, pos


def build_iterator(data_cfg: DataConfig, *, split: str = "train",
                   shuffle: bool | None = None,
                   exclude_prompts: frozenset[str] | set[str] = frozenset()) -> PromptIterator:
    """Loads the sources of a split and mixes them.

    Args:
      data_cfg: the data section (sources / val_sources, seed, on_bad_record).
      split: "train" (data_cfg.sources) or "val" (data_cfg.val_sources).
      shuffle: default True for "train" and False for "val" (a fixed validation order).
      exclude_prompts: records whose prompt text is one of these are dropped (held-out
        prompts kept out of training); the counts per source are in `.excluded`.

    Returns:
      A PromptIterator at epoch 0, position 0.

    Raises:
      ConfigError: unknown split or no sources. DataError: bad data, or a source that
        holds nothing but excluded prompts.
    """
    from prorl_jax.data.sources import read_source

    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    cfgs = data_cfg.sources if split == "train" else data_cfg.val_sources
    if not cfgs:
        key = "data.sources" if split == "train" else "data.val_sources"
        raise ConfigError(f"{key} is empty: give at least one data source")
    if split == "val":
        _warn_generated_overlap(data_cfg)
    loaded = [read_source(c, on_bad_record=data_cfg.on_bad_record) for c in cfgs]
    names = [d.name for d in loaded]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    records = [[r for r in d.records if r.prompt not in exclude_prompts] for d in loaded]
    excluded = {n: len(d.records) - len(kept) for n, d, kept in zip(names, loaded, records)}
    for name, kept in zip(names, records):
        if not kept and excluded[name]:
            raise DataError(f"data source {name}: all {excluded[name]} records are held-out "
                            f"prompts (data.val_sources); give it other data or set "
                            f"data.exclude_val_prompts: false")
    it = PromptIterator(records, [c.weight for c in cfgs],
                        seed=data_cfg.seed, shuffle=(split == "train") if shuffle is None else shuffle,
                        names=names)
    it.skipped.update({n: d.skipped for n, d in zip(names, loaded)})
    it.excluded = excluded
    return it


def _warn_generated_overlap(data_cfg: DataConfig) -> None:
    """Reasoning Gym entry i of a task depends only on (seed, config): a validation source
    with a training source's seed would score the model on prompts it trains on."""
    for v in data_cfg.val_sources:
        for t in data_cfg.sources:
            if v.kind == t.kind == "reasoning_gym" and v.seed == t.seed:
                shared = sorted(set(v.tasks) & set(t.tasks))
                if shared:
                    log.warning("validation reasoning_gym tasks %s use the training seed %d: their "
                                "prompts repeat training prompts; give val_sources another seed",
                                ", ".join(shared), v.seed)
