"""Test setup: 8 fake CPU devices (for sharding tests) and no network."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_xdist_auto_num_workers(config):
    """Workers for `-n auto`: one per core, at most 4.

    Most tests are bound by XLA compilation, which runs on one thread, so a second worker
    uses the core that compilation leaves idle; past 4, every worker's copy of jax, torch and
    its compiled programs costs memory for little gain. PRORL_TEST_WORKERS overrides.
    """
    if os.environ.get("PRORL_TEST_WORKERS"):
        return int(os.environ["PRORL_TEST_WORKERS"])
    return max(1, min(os.cpu_count() or 1, 4))
