import sys

from prorl_jax.cli import main

sys.exit(main())
