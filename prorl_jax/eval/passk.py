"""The unbiased pass@k estimator and success thresholds for continuous rewards.

pass@k of one problem, from n samples of which c succeeded (Chen et al. 2021, "Evaluating
Large Language Models Trained on Code"), is the probability that a k-subset drawn without
replacement from the n samples holds at least one success:

    pass@k = 1 - C(n - c, k) / C(n, k)

The binomials overflow float64 long before n reaches the thousands, so the ratio is taken as
a product of c factors, C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), summed in log
space (log1p) and closed with expm1, which keeps full relative precision both when pass@k is
tiny (few successes) and when it is close to 1.
"""

from __future__ import annotations

import numpy as np

from prorl_jax.errors import UserError

DEFAULT_THRESHOLD = 1.0
_CHUNK_ELEMENTS = 1 << 22


class EvalError(UserError, ValueError):
    """Bad evaluation input: k out of range, inconsistent sample counts, bad data spec."""


def _as_counts(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise EvalError(f"{name} must hold whole numbers, got {x!r}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise EvalError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def pass_at_k(n, c, k: int) -> np.ndarray | float:
    """Unbiased pass@k, vectorised over problems.

    Args:
      n: number of samples per problem, int or int array [P].
      c: number of successful samples per problem, int or int array [P] (broadcast with n),
        0 <= c <= n.
      k: subset size, 1 <= k <= n for every problem.

    Returns:
      float64 array [P] of per-problem pass@k (a Python float when n and c are scalars).

    Raises:
      EvalError: k < 1, k > n for some problem, or c outside [0, n].
    """
    n_arr, c_arr = np.broadcast_arrays(_as_counts(n, "n"), _as_counts(c, "c"))
    k_int = int(k)
    if k_int != k or k_int < 1:
        raise EvalError(f"k must be a positive integer, got {k!r}")
    if n_arr.size and np.any(n_arr < 1):
        raise EvalError(f"n must be >= 1, got {n_arr.min()}")
    if n_arr.size and np.any(k_int > n_arr):
        raise EvalError(f"k={k_int} exceeds the number of samples n={n_arr.min()}; "
                        "pass@k needs k <= n")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise EvalError("c must satisfy 0 <= c <= n for every problem")

    flat_n, flat_c = n_arr.reshape(-1), c_arr.reshape(-1)
    out = np.ones(flat_n.shape, dtype=np.float64)
    # With fewer than k failures every k-subset holds a success: pass@k is exactly 1.
    live = (flat_n - flat_c) >= k_int
    if np.any(live):
        out[live] = _failure_free_ratio_complement(flat_n[live], flat_c[live], k_int)
    out = out.reshape(n_arr.shape)
    return float(out) if out.ndim == 0 else out


def _failure_free_ratio_complement(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """1 - prod_{i=n-c+1}^{n} (1 - k/i) for rows with n - c >= k (so every factor is > 0)."""
    out = np.empty(n.shape, dtype=np.float64)
    width = max(int(c.max()), 1)
    # Row p holds the factors i = n-c+1 .. n; columns past c_p are padding (log 1 = 0). Rows go
    # in chunks so the [rows, width] scratch stays near 32 MB whatever the problem count.
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // width)
    j = np.arange(width, dtype=np.int64)[None, :]
    for start in range(0, n.size, rows_per_chunk):
        cn, cc = n[start:start + rows_per_chunk], c[start:start + rows_per_chunk]
        i = (cn - cc + 1)[:, None] + j
        valid = j < cc[:, None]
        safe_i = np.where(valid, i, k + 1).astype(np.float64)
        log_terms = np.where(valid, np.log1p(-k / safe_i), 0.0)
        out[start:start + rows_per_chunk] = 0.0 - np.expm1(log_terms.sum(axis=1))  # 0.0 - : no -0.0 when c = 0
    return out


def successes(rewards, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Which samples count as solved.

    Binary verifiers give 0 or 1; continuous ones (code test fraction, Reasoning Gym scores,
    IFEval constraint fraction) give values in between, and pass@k needs a yes/no per sample.
    The default threshold 1.0 means "fully correct" (reward == 1 for rewards in [0, 1]).

    Args:
      rewards: float array of any shape.
      threshold: a sample succeeds when its reward >= threshold.

    Returns:
      bool array with the shape of rewards.
    """
    return np.asarray(rewards, dtype=np.float64) >= threshold


def pass_at_k_curve(rewards_per_problem, ks, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Mean pass@k over problems for several k, plus the mean reward.

    Args:
      rewards_per_problem: sequence of per-problem reward sequences (lengths may differ).
      ks: the k values; each must be <= the smallest per-problem sample count.
      threshold: success threshold (see `successes`).

    Returns:
      {"num_problems": P, "pass@k": {k: mean pass@k}, "mean_reward": mean over problems of
      the per-problem mean reward}. With P == 0 the means are NaN.
    """
    rows = [np.asarray(r, dtype=np.float64) for r in rewards_per_problem]
    n = np.array([r.size for r in rows], dtype=np.int64)
    c = np.array([int(successes(r, threshold).sum()) for r in rows], dtype=np.int64)
    curve = {}
    for k in ks:
        curve[int(k)] = float(np.mean(pass_at_k(n, c, k))) if rows else float("nan")
    mean_reward = float(np.mean([r.mean() for r in rows])) if rows else float("nan")
    return {"num_problems": len(rows), "pass@k": curve, "mean_reward": mean_reward}


def parse_ks(text: str, n: int | None = None) -> list[int]:
    """Parse a k list such as "1,2,4,8" (an empty string: powers of two up to n).

    Args:
      text: comma-separated positive integers, or "" for the default.
      n: samples per prompt; every k must be <= n.

    Returns:
      sorted, de-duplicated list of k.
    """
    if not text.strip():
        if n is None:
            raise EvalError("an empty k list needs n to pick the default powers of two")
        ks, k = [], 1
        while k <= n:
            ks.append(k)
            k *= 2
        return ks
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise EvalError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise EvalError(f"--k values must be positive integers, got {text!r}")
    if n is not None and ks[-1] > n:
        raise EvalError(f"--k {ks[-1]} exceeds --n {n}: pass@k needs k <= n")
    return ks
