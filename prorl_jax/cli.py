"""The `prorl-jax` command: train, generate, eval, convert.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args)`.
Those modules keep their top-level imports light (no jax) so that `--help` is instant;
heavy imports happen inside `run`. A `UserError` ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from prorl_jax import __version__, distributed, host_memory
from prorl_jax.errors import UserError

COMMANDS = {
    "train": ("prorl_jax.rl.train_cli", "run ProRL training (no arguments: the embedded CPU demo)"),
    "generate": ("prorl_jax.sampling.generate_cli", "sample completions from a checkpoint"),
    "eval": ("prorl_jax.eval.eval_cli", "pass@k evaluation and reasoning-boundary reports"),
    "convert": ("prorl_jax.model.convert_cli", "convert checkpoints between Hugging Face and Orbax"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prorl-jax",
        description="ProRL (prolonged reinforcement learning) for Qwen models in JAX.")
    parser.add_argument("--version", action="version", version=f"prorl-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        distributed.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class _NoTorchBanner(logging.Filter):
    """transformers announces at import that PyTorch is missing; this project never needs
    torch (models are JAX), so the banner is only noise at the top of every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("PyTorch was not found")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required (one of {', '.join(COMMANDS)}); "
              f"'{parser.prog} --help' describes them", file=sys.stderr)
        return 2
    # Installed before transformers is first imported (command modules import it lazily).
    hf_logger = logging.getLogger("transformers")
    if not any(isinstance(f, _NoTorchBanner) for f in hf_logger.filters):
        hf_logger.addFilter(_NoTorchBanner())
    try:
        # Before jax starts its threads (no command has imported it yet): see host_memory.
        host_memory.apply_for_cpu()
        return distributed.run_command(args, args.command, args._run)
    except UserError as e:
        print(f"prorl-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C while the interpreter tears down (XLA threads still running)
        # could crash it; exit at once instead, with the same code.
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        print(f"prorl-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
