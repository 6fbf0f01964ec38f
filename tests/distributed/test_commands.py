"""`prorl-jax eval` under two real processes x 4 CPU devices == the one-process command."""

import json

import pytest

from prorl_jax.cli import main

pytestmark = pytest.mark.slow

# The demo base on the prompts it was warmed up on (configs/demo.yaml): it solves some.
TASK = ('{"basic_arithmetic": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1, '
        '"operators": ["+", "-"], "allow_parentheses": false, "allow_negation": false}}')
EVAL = ["eval", "--model", "builtin:demo_base", "--data", "reasoning_gym:basic_arithmetic:4",
        "--task-config", TASK, "--suffix", "reasoning_gym=Answer in <answer></answer>.",
        "--n", "4", "--k", "1,2,4", "--temperature", "1.0", "--top-p", "1.0",
        "--max-new-tokens", "8", "--batch-prompts", "3", "--reward-workers", "0",
        "--no-progress"]


def _stdout(proc) -> str:
    # gloo's connection lines go to stderr (distributed._native_stdout_to_stderr).
    assert "[Gloo]" not in proc.stdout
    return _lines(proc.stdout)


def _lines(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if ln.strip())


def test_two_process_eval_writes_the_single_process_report(tmp_path, run_processes, explain,
                                                            capsys):
    # Two processes sample each batch over one data=8 mesh spanning both, each scores its
    # half of the rows; process 0 alone writes OUT and prints. 4 prompts in batches of 3:
    # neither batch (12 rows, 4 rows) divides the 8 devices.
    procs = run_processes(["-m", "prorl_jax", *EVAL, "--out", str(tmp_path / "two")])
    assert [p.rc for p in procs] == [0, 0], explain(procs)
    out = [_stdout(p) for p in procs]
    assert "pass@k (%)" in out[0] and out[1] == "", explain(procs)

    assert main([*EVAL, "--out", str(tmp_path / "one")]) == 0  # one process, one device
    one_out = capsys.readouterr().out
    assert out[0].replace(str(tmp_path / "two"), "OUT") == _lines(one_out).replace(
        str(tmp_path / "one"), "OUT")
    files = sorted(p.relative_to(tmp_path / "one").as_posix()
                   for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two").as_posix()
                           for p in (tmp_path / "two").rglob("*") if p.is_file())
    for name in files:
        if name.endswith((".json", ".jsonl", ".md")):
            assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(
            ), name
    # Not a vacuous report: the demo model solves some samples and fails others.
    rewards = [r for line in (tmp_path / "one" / "samples" / "demo_base.jsonl").open()
               for r in json.loads(line)["rewards"]]
    assert len(rewards) == 16 and 0 < sum(r >= 1 for r in rewards) < 16
