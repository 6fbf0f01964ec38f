"""`prorl-jax train`: run ProRL (no --config: the embedded CPU demo, prorl_jax/configs/demo.yaml)."""

from __future__ import annotations

import argparse
import datetime
import logging
import pathlib
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file or shipped config name (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set rl.kl_coef=1e-3 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: runs/<config>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its latest complete checkpoint")
    p.add_argument("--step", type=int, default=None, metavar="N",
                   help="with --resume: resume from checkpoint step N instead of the latest "
                        "complete one (e.g. when the latest is damaged); later checkpoints are "
                        "replaced as the run reaches their steps again")
    p.add_argument("--reset-reference", action="store_true",
                   help="with --resume: reset the reference policy to the current policy first")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (parameters, per-device memory, shapes) and exit")


def run(args: argparse.Namespace) -> int:
    from prorl_jax.config import load_config, resolve_config_path
    from prorl_jax.errors import ConfigError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from prorl_jax import distributed

    if distributed.is_primary():  # the others log warnings only (distributed.setup_logging)
        logging.getLogger("prorl_jax").setLevel(logging.INFO)
    if args.reset_reference and not args.resume:
        raise ConfigError("--reset-reference needs --resume RUN_DIR")
    if args.step is not None and not args.resume:
        raise ConfigError("--step needs --resume RUN_DIR")
    if args.resume:
        run_dir = pathlib.Path(args.resume)
        path = run_dir / "config.yaml"
        # A resumed run is the run in RUN_DIR: its own config.yaml, changed only by --set.
        if args.config:
            raise ConfigError(f"--resume {run_dir} trains with {path}; --config cannot be "
                              f"combined with it (change values with --set key=value)")
        if args.run_dir and pathlib.Path(args.run_dir).resolve() != run_dir.resolve():
            raise ConfigError(f"--resume {run_dir} continues in {run_dir}; drop --run-dir")
        if not path.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    else:
        path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)

    if args.dry_run:
        from prorl_jax.rl.plan import format_plan, memory_plan

        distributed.console(format_plan(cfg, memory_plan(cfg), path))
        return 0

    if args.resume:
        run_dir = pathlib.Path(args.resume)
    elif args.run_dir:
        run_dir = pathlib.Path(args.run_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = pathlib.Path("runs") / f"{pathlib.Path(path).stem}-{stamp}"

    from prorl_jax.paths import check_output_dir

    check_output_dir(run_dir, "--resume" if args.resume else
                     "--run-dir" if args.run_dir else "run directory")
    if args.resume:
        _check_resume_step(run_dir, args.step)

    from prorl_jax.errors import DamagedCheckpointError
    from prorl_jax.rl.trainer import Trainer

    existed = run_dir.exists()
    try:
        try:
            trainer = Trainer(cfg, run_dir, resume=bool(args.resume),
                              reset_reference=args.reset_reference, resume_step=args.step,
                              console=distributed.console)
        except DamagedCheckpointError as e:
            raise _with_fallback(e, run_dir) from None
        summary = trainer.run()
    except BaseException:
        if not existed and distributed.is_primary():
            _discard_failed_start(run_dir)
        raise
    distributed.console(format_summary(summary))
    return int(summary.get("exit_code", 0))


def _discard_failed_start(run_dir: pathlib.Path) -> None:
    """Removes a run directory this command created when the run failed before its first
    step was logged or checkpointed (it then holds nothing worth keeping)."""
    import shutil

    from prorl_jax.checkpoint import complete_steps
    from prorl_jax.rl.metrics_log import read_metrics

    if not run_dir.is_dir() or complete_steps(run_dir / "checkpoints"):
        return
    try:
        logged = any(r.get("step", 0) >= 1 for r in read_metrics(run_dir))
    except (OSError, ValueError):
        logged = False
    if logged:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"prorl-jax train: removed {run_dir}: the run failed before its first step",
          file=sys.stderr)


def _with_fallback(e, run_dir: pathlib.Path):
    """The damaged-checkpoint error with the command that resumes from the step before."""
    from prorl_jax.errors import DamagedCheckpointError

    if e.fallback is None:
        return e
    return DamagedCheckpointError(f"{e}: resume from it with --resume {run_dir} --step "
                                  f"{e.fallback}", e.step, e.fallback)


def _check_resume_step(run_dir: pathlib.Path, step: int | None) -> None:
    """Before anything is loaded: the step to resume exists and has all its items."""
    from prorl_jax import checkpoint
    from prorl_jax.errors import DamagedCheckpointError

    ckpt_dir = run_dir / "checkpoints"
    if not checkpoint.complete_steps(ckpt_dir):
        return  # the trainer says "no complete checkpoint" in its own words
    try:
        checkpoint.require_items(ckpt_dir, checkpoint.resolve_step(ckpt_dir, step))
    except DamagedCheckpointError as e:
        raise _with_fallback(e, run_dir) from None


def format_summary(summary: dict) -> str:
    lines = [f"run directory: {summary['run_dir']}"]
    before, after = summary.get("val_before"), summary.get("val_after")
    if before and after:
        lines.append("held-out validation, before -> after training:")
        # pass@1 then mean reward, overall first, then per domain.
        keys = [k for k in after if k.startswith(("val/pass@1", "val/reward/"))]
        keys.sort(key=lambda k: (not k.startswith("val/pass@1"), k.count("/"), k))
        for k in keys:
            b = before.get(k, float("nan"))
            lines.append(f"  {k[len('val/'):]:<28} before {b:.3f}  after {after[k]:.3f}  "
                         f"({after[k] - b:+.3f})")
    if "steps" in summary:
        lines.append(f"trained steps {summary['start_step']} -> {summary['steps']}; "
                     f"reference resets at steps {[r['step'] for r in summary.get('resets', [])]}")
    if summary.get("empty_steps"):
        lines.append(f"warning: {summary['empty_steps']} step(s) had nothing to learn from "
                     f"(every group got identical rewards)")
    if "hf_dir" in summary:
        lines.append(f"final policy (Hugging Face format): {summary['hf_dir']}")
    if summary.get("boundary"):
        from prorl_jax.rl.boundary import summary_lines

        lines += summary_lines(summary["boundary"])
    return "\n".join(lines)
