"""Engine settings shared by the config, the CLIs and the engine (no jax import here, so
config validation and `--help` stay fast)."""

from __future__ import annotations

from prorl_jax.errors import ConfigError

ENGINES = ("continuous", "static")
LAYOUTS = ("decode", "train")
DEFAULT_ENGINE = "continuous"
DEFAULT_STEPS_PER_SYNC = 16


class EngineError(ConfigError):
    """Bad engine settings (engine, decode_slots, steps_per_sync, layout)."""


def check_engine_settings(engine: str = DEFAULT_ENGINE, decode_slots: int | None = None,
                          steps_per_sync: int = DEFAULT_STEPS_PER_SYNC,
                          max_batch_tokens: int | None = None,
                          max_new_tokens: int | None = None) -> None:
    """Raises EngineError (one line naming the config key) for unusable engine settings.

    With max_batch_tokens and max_new_tokens, also refuses decode_slots whose KV cache
    cannot fit: a slot holds prompt bucket + max_new_tokens > max_new_tokens token slots
    (the exact check, with the prompt bucket, runs when the prompts are known).
    """
    if engine not in ENGINES:
        raise EngineError(f"sampling.engine must be one of {ENGINES}, got {engine!r}")
    if decode_slots is not None and (isinstance(decode_slots, bool)
                                     or not isinstance(decode_slots, int) or decode_slots < 1):
        raise EngineError(f"sampling.decode_slots must be an integer >= 1, got {decode_slots!r}")
    if (isinstance(steps_per_sync, bool) or not isinstance(steps_per_sync, int)
            or steps_per_sync < 1):
        raise EngineError(f"sampling.steps_per_sync must be an integer >= 1, "
                          f"got {steps_per_sync!r}")
    if decode_slots and max_batch_tokens and max_new_tokens and \
            decode_slots * max_new_tokens > max_batch_tokens:
        raise EngineError(
            f"sampling.decode_slots={decode_slots} needs more than "
            f"{decode_slots * max_new_tokens} KV slots (decode_slots x max_new_tokens), over "
            f"sampling.max_batch_tokens={max_batch_tokens}")
