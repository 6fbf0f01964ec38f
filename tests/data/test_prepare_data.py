"""tools/prepare_data.py on small fixture files in each public format; the output loads as
a `kind: jsonl` source."""

import importlib.util
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prorl_jax.config import SourceConfig
from prorl_jax.data import load_source

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "prepare_data.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("prepare_data", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tool, tmp_path, *args):
    out = tmp_path / "out.jsonl"
    code = tool.main([*map(str, args), "-o", str(out)])
    return code, (load_source(SourceConfig(kind="jsonl", path=str(out))) if code == 0 else None)


def test_deepscaler(tool, tmp_path):
    src = jsonl(tmp_path / "ds.jsonl", [
        {"problem": "Compute $1+1$.", "answer": "2", "solution": "..."},
        {"problem": "Find $x$ if $2x=1$.", "answer": "\\frac{1}{2}", "solution": "..."}])
    code, recs = run(tool, tmp_path, "deepscaler", src)
    assert code == 0 and [r.domain for r in recs] == ["math", "math"]
    assert recs[1].prompt == "Find $x$ if $2x=1$." and recs[1].ground_truth == "\\frac{1}{2}"
    assert recs[0].id == "deepscaler:1" and recs[0].meta == {"source": "deepscaler"}


def test_eurus_parquet(tool, tmp_path):
    system = "When tackling complex reasoning tasks, you have access to the following actions."
    rows = [
        {"data_source": "numina_olympiads", "ability": "math",
         "prompt": [{"role": "system", "content": system},
                    {"role": "user", "content": "What is 3*3?"}],
         "reward_model": {"style": "rule", "ground_truth": "9"},
         "extra_info": {"split": "train", "index": 0}},
        {"data_source": "taco", "ability": "code",
         "prompt": [{"role": "system", "content": system},
                    {"role": "user", "content": "Print the input twice."}],
         "reward_model": {"style": "rule",
                          "ground_truth": json.dumps({"inputs": ["a\n"], "outputs": ["a\na\n"]})},
         "extra_info": {"split": "train", "index": 1}},
    ]
    src = str(tmp_path / "eurus.parquet")
    pq.write_table(pa.Table.from_pylist(rows), src)
    code, recs = run(tool, tmp_path, "eurus", src)
    assert code == 0 and [r.domain for r in recs] == ["math", "code"]
    assert recs[1].ground_truth == {"inputs": ["a\n"], "outputs": ["a\na\n"]}
    assert recs[0].prompt[0] == {"role": "system", "content": system}
    assert recs[1].meta["data_source"] == "taco"


def test_scp116k_answer_from_boxed_and_agreement_filter(tool, tmp_path):
    rows = [
        {"domain": "physics", "problem": "Speed of light?", "matched_solution":
         "So $c = \\boxed{3\\times 10^{8}\\,\\mathrm{m/s}}$.",
         "is_o1_solution_same_with_matched_solution": True},
        {"domain": "chemistry", "problem": "pH of pure water?", "answer": "7",
         "matched_solution": "neutral", "is_o1_solution_same_with_matched_solution": False},
        {"domain": "biology", "problem": "Unanswerable", "matched_solution": "no box here",
         "is_o1_solution_same_with_matched_solution": True},
    ]
    src = jsonl(tmp_path / "scp.jsonl", rows)
    assert tool.main(["scp116k", src, "-o", str(tmp_path / "x.jsonl")]) == 2  # row 3: no answer
    code, recs = run(tool, tmp_path, "scp116k", src, "--on-bad-record", "skip")
    assert code == 0 and [r.ground_truth for r in recs] == ["3\\times 10^{8}\\,\\mathrm{m/s}", "7"]
    assert recs[0].domain == "stem" and recs[0].meta["subject"] == "physics"
    code, recs = run(tool, tmp_path, "scp116k", src, "--on-bad-record", "skip",
                     "--require-agreement")
    assert [r.prompt for r in recs] == ["Speed of light?"]


def test_ifeval_with_arrow_padded_kwargs(tool, tmp_path):
    rows = [{"key": 1000, "prompt": "Write a story in lowercase.",
             "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
             "kwargs": [{"num_words": None, "relation": None},
                        {"num_words": 100, "relation": "at least"}]}]
    src = str(tmp_path / "ifeval.parquet")
    pq.write_table(pa.Table.from_pylist(rows), src)
    code, recs = run(tool, tmp_path, "ifeval", src)
    assert code == 0 and recs[0].id == "1000" and recs[0].domain == "ifeval"
    assert recs[0].ground_truth == {
        "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
        "kwargs": [{}, {"num_words": 100, "relation": "at least"}]}


def test_reasoning_gym_task_list(tool, tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# logic puzzles\ngcd\nchain_sum {\"min_terms\": 2, \"max_terms\": 2}\n\n")
    code, recs = run(tool, tmp_path, "reasoning_gym", tasks, "--size", 3, "--seed", 5)
    assert code == 0 and len(recs) == 6
    assert [r.ground_truth["task"] for r in recs] == ["gcd"] * 3 + ["chain_sum"] * 3
    assert recs[0].id == "reasoning_gym:gcd:5:0"
    tasks.write_text("gcd {min_value: 2}\n")
    assert tool.main(["reasoning_gym", str(tasks), "-o", str(tmp_path / "y.jsonl")]) == 2


def test_errors_are_one_line_and_leave_no_output(tool, tmp_path, capsys):
    src = tmp_path / "ds.jsonl"
    src.write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    out = tmp_path / "never.jsonl"
    assert tool.main(["deepscaler", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: {src}:2: missing field 'answer'"
    assert not out.exists() and not (tmp_path / "never.jsonl.tmp").exists()
    assert tool.main(["deepscaler", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_last_boxed_handles_nested_braces(tool):
    assert tool.last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert tool.last_boxed("\\boxed{unclosed {") is None
    assert tool.last_boxed("nothing") is None


def test_the_command_in_docs_training_md_works(tmp_path):
    """Every `python tools/prepare_data.py ...` line of docs/training.md, run as written
    (from a directory holding a tiny input under the documented name)."""
    import os
    import shlex
    import subprocess
    import sys

    root = TOOL.parents[1]
    lines = [ln.strip() for ln in (root / "docs" / "training.md").read_text().splitlines()
             if ln.strip().startswith("python tools/prepare_data.py")]
    assert lines, "docs/training.md shows no prepare_data command"
    (tmp_path / "tools").symlink_to(root / "tools")
    # DeepScaleR ships one JSON array.
    (tmp_path / "deepscaler.json").write_text(json.dumps([{"problem": "Compute $1+1$.",
                                                           "answer": "2"}]))
    for line in lines:
        argv = shlex.split(line)
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.returncode == 0, (line, proc.stderr)
        out = argv[argv.index("-o") + 1]
        [rec] = load_source(SourceConfig(kind="jsonl", path=str(tmp_path / out)))
        assert (rec.domain, rec.ground_truth) == ("math", "2")
