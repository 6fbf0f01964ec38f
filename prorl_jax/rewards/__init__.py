"""Verifiable rewards for ProRL's five domains (see docs/rewards.md).

    from prorl_jax import rewards
    r = rewards.get("math")(completion, "\\frac{1}{2}")          # float in [0, 1]
    with rewards.RewardPool(num_workers=2, timeout_s=10) as pool:  # keep it across steps
        rs = pool.score([(domain, completion, ground_truth), ...])
"""

from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.pool import ItemInfo, RewardPool, score_batch
from prorl_jax.rewards.registry import DOMAINS, get, score_one
from prorl_jax.rewards.sandbox import SandboxLimits, protections

__all__ = ["DOMAINS", "ItemInfo", "RewardPool", "SandboxLimits", "Verdict", "get", "protections",
           "score_batch", "score_one"]
