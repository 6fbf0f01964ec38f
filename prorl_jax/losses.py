"""The functional GRPO / ProRL loss pieces, re-exported from `prorl_jax.rl.losses`.

`from prorl_jax import losses` and `import prorl_jax.losses` give the same names as
`prorl_jax.rl.losses`; the definitions (and their docs) live there.
"""

from prorl_jax.rl.losses import *  # noqa: F403
from prorl_jax.rl.losses import __all__  # noqa: F401
