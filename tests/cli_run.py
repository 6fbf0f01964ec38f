"""Running `python -m prorl_jax ...` as a user would, and the one-line error contract.

Shared by the CLI tests of every subcommand (pyproject's pytest `pythonpath` puts tests/ on
sys.path, so a test imports it as `from cli_run import ...`).
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def prorl(*args, env=None, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    """`python -m prorl_jax ARGS` in a subprocess, output captured."""
    cmd = [sys.executable, "-m", "prorl_jax", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def sets(overrides) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [x for o in overrides for x in ("--set", o)]


def assert_one_line_error(proc, *parts, command: str | None = None,
                          after_warnings: bool = False) -> None:
    """Exit 2, no traceback, and the error is one line holding every part (with `command`,
    starting `prorl-jax COMMAND: error:`).

    The line is all of stderr, or with `after_warnings` its last line: a run that started
    may log warnings before it stops on an error.
    """
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert after_warnings or len(lines) == 1, proc.stderr[-2000:]
    line = lines[-1]
    if command is not None:
        assert line.startswith(f"prorl-jax {command}: error:"), line
    for part in parts:
        assert part in line, (part, line)
