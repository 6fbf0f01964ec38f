"""The `prorl-jax` command: every subcommand is there, and --help stays cheap."""

import subprocess
import sys

from prorl_jax import cli


def test_all_subcommands_are_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "generate", "eval", "convert"}


def test_help_does_not_import_jax():
    # Building the parser imports every command module; none may import jax at top level.
    code = ("import sys; from prorl_jax import cli; cli.build_parser(); "
            "sys.exit(1 if 'jax' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "prorl_jax"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "a command is required (one of train, generate, eval, convert)" in proc.stderr
    assert "Traceback" not in proc.stderr
