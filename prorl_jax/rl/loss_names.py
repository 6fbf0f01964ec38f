"""The names the loss library accepts: aggregation modes and KL estimators.

They live apart from rl/losses.py only so that the run config can validate against them
without importing jax; rl.losses re-exports them and is where they are documented.
"""

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# The modes that average over sequences (the normaliser counts rows, not tokens).
SEQ_MEAN_MODES = tuple(m for m in AGG_MODES if m.startswith("seq-mean"))

# Every accepted KL name -> its canonical estimator; each also takes a "+" suffix
# (verl's straight-through variants).
KL_ALIASES = {"k1": "k1", "kl": "k1", "abs": "abs", "k2": "k2", "mse": "k2",
              "k3": "k3", "low_var_kl": "k3"}
KL_KINDS = (*KL_ALIASES, *(k + "+" for k in KL_ALIASES))
