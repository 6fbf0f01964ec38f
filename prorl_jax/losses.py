"""`prorl_jax.losses` is `prorl_jax.rl.losses` (the functional GRPO / ProRL loss pieces)."""

import sys

from prorl_jax.rl import losses as _losses

sys.modules[__name__] = _losses
