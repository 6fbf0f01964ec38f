"""The RewardPool / score_batch snippet of docs/api.md, run as a plain script."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]


def snippet() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("## Rewards"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_script(path: pathlib.Path, code: str):
    path.write_text(code)
    return subprocess.run([sys.executable, str(path)], cwd=path.parent, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_snippet_runs_as_a_script(tmp_path):
    proc = run_script(tmp_path / "snippet.py", snippet())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["1.0", "[1.0, 0.0]", "[1.0, 0.0]"]


def test_without_the_guard_the_error_says_what_to_do(tmp_path):
    code = snippet()
    head, body = code.split('if __name__ == "__main__":')
    body = textwrap.dedent(body.split("\n", 1)[1])
    proc = run_script(tmp_path / "noguard.py", head + body)
    assert proc.returncode != 0
    assert "reward workers keep failing to start" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr.strip().splitlines()[-1]
