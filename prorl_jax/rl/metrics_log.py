"""Per-step metrics: RUN_DIR/metrics.jsonl, TensorBoard event files, optional W&B."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
from typing import Any

from prorl_jax.config import LoggingConfig

log = logging.getLogger(__name__)


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a metric. TensorBoard allows only [A-Za-z0-9_./-] and would
    itself turn `val/pass@1` into the unreadable `val/pass_1`: '@' becomes '_at_'
    (`val/pass_at_1`), any other character outside the set '_'."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


def _jsonable(v: Any):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Appends one JSON object per step; mirrors scalars to TensorBoard and W&B.

    On resume, lines for steps after the restored one are dropped first, so a run that
    was killed after logging but before checkpointing never double-counts a step.
    """

    def __init__(self, run_dir: str | pathlib.Path, cfg: LoggingConfig, *,
                 resume_step: int | None = None, run_config: dict | None = None):
        self.path = pathlib.Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            self.truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._tb = None
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(run_dir) / "tensorboard"))
        self._wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                log.warning("logging.wandb is on but wandb is not installed; skipping W&B")
            else:
                self._wandb = wandb.init(project=cfg.wandb_project, config=run_config,
                                         dir=str(run_dir), resume="allow")

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
        self.path.write_text("".join(k + "\n" for k in keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(tensorboard_tag(k), v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
