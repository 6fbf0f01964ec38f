"""Record-schema sources (JSONL / JSON / parquet) and every bad-input message."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prorl_jax.config import SourceConfig
from prorl_jax.data import load_source, read_source
from prorl_jax.errors import DataError, UserError

ROWS = [
    {"id": "m1", "domain": "math", "prompt": "1+1?", "ground_truth": "2"},
    {"id": "c1", "domain": "code", "prompt": [{"role": "user", "content": "echo"}],
     "ground_truth": {"inputs": ["a\n"], "outputs": ["a\n"]}, "meta": {"difficulty": 3}},
    {"id": "i1", "domain": "ifeval", "prompt": "Write a haiku.",
     "ground_truth": {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}},
]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_loads_every_format_identically(tmp_path, fmt):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif fmt == "json":
        path = str(tmp_path / "d.json")
        (tmp_path / "d.json").write_text(json.dumps(ROWS, indent=2))
    else:
        # parquet needs one type per column: structured ground truths go in as JSON text.
        path = str(tmp_path / "d.parquet")
        rows = [{**r, "ground_truth": r["ground_truth"] if isinstance(r["ground_truth"], str)
                 else json.dumps(r["ground_truth"]),
                 "prompt": r["prompt"] if isinstance(r["prompt"], list)
                 else [{"role": "user", "content": r["prompt"]}],
                 "meta": r.get("meta", {"difficulty": 0})} for r in ROWS]
        pq.write_table(pa.Table.from_pylist(rows), path)
    recs = load_source(SourceConfig(kind=fmt, path=path))
    assert [r.id for r in recs] == ["m1", "c1", "i1"]
    assert [r.domain for r in recs] == ["math", "code", "ifeval"]
    assert recs[1].ground_truth == {"inputs": ["a\n"], "outputs": ["a\n"]}
    assert recs[1].meta == {"difficulty": 3}
    assert recs[2].ground_truth["instruction_id_list"] == ["change_case:english_lowercase"]


def test_default_domain_ids_limit_and_extra_fields(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl",
                       [{"prompt": f"q{i}", "ground_truth": str(i), "level": i} for i in range(5)])
    recs = load_source(SourceConfig(kind="jsonl", path=path, domain="stem", limit=3))
    assert [r.id for r in recs] == ["plain:1", "plain:2", "plain:3"]  # 1-based lines
    assert all(r.domain == "stem" for r in recs) and recs[2].meta == {"level": 2}


def test_glob_reads_every_file_with_unique_ids(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x", "ground_truth": "1"}])
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "y", "ground_truth": "2"}])
    recs = load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "*.jsonl"), domain="math",
                                    name="mix"))
    assert [r.id for r in recs] == ["mix:a:1", "mix:b:1"]


GOOD = {"domain": "math", "prompt": "p", "ground_truth": "1"}
BAD_CASES = {
    "malformed": ('{"domain": "math", "prompt": "p", ground_truth}', r"d\.jsonl:3: malformed JSON"),
    "not_object": ("[1, 2]", r"d\.jsonl:3: expected a JSON object, got list"),
    "missing": (json.dumps({"domain": "math", "ground_truth": "1"}),
                r"d\.jsonl:3: missing field 'prompt'"),
    "wrong_type": (json.dumps({**GOOD, "ground_truth": ["1", "2"]}),
                   r"d\.jsonl:3: math ground_truth must be an answer string, got list"),
    "unknown_domain": (json.dumps({**GOOD, "domain": "poetry"}),
                       r"d\.jsonl:3: unknown domain 'poetry'"),
    "no_domain": (json.dumps({"prompt": "p", "ground_truth": "1"}),
                  r"d\.jsonl:3: missing field 'domain'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_line_names_file_and_line_or_is_skipped(tmp_path, case, caplog):
    line, msg = BAD_CASES[case]
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD], [line, json.dumps(GOOD)])
    with pytest.raises(DataError, match=msg) as exc:
        load_source(SourceConfig(kind="jsonl", path=path))
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    with caplog.at_level(logging.WARNING):
        data = read_source(SourceConfig(kind="jsonl", path=path), on_bad_record="skip")
    assert len(data.records) == 3 and data.skipped == 1
    assert [r.id for r in data.records] == ["d:1", "d:2", "d:4"]  # ids keep their lines
    assert "skipped 1 bad records" in caplog.text


def test_bad_row_in_parquet_names_the_row(tmp_path):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist([{"domain": "math", "prompt": "a", "ground_truth": "1"},
                                         {"domain": "math", "prompt": "b", "ground_truth": None}]),
                   path)
    with pytest.raises(DataError, match=r"d\.parquet row 1: missing field 'ground_truth'"):
        load_source(SourceConfig(kind="parquet", path=path))


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_dataset(tmp_path, content):
    (tmp_path / "e.jsonl").write_text(content)
    with pytest.raises(DataError, match=r"e\.jsonl: the dataset is empty"):
        load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "e.jsonl"), domain="math"))


def test_all_rows_skipped_is_an_empty_dataset_with_the_reason(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p"}])
    with pytest.raises(DataError, match=r"empty \(1 bad records skipped, e\.g\. .*e\.jsonl:1: "
                                        r"missing field 'ground_truth'"):
        load_source(SourceConfig(kind="jsonl", path=path, domain="math"), on_bad_record="skip")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unknown file type"):
        load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "d.csv")))
    with pytest.raises(DataError, match=r"\*\.zzz: no data files match"):
        load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "*.zzz")))


def test_source_config_validation():
    from prorl_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="domain must be one of"):
        SourceConfig(kind="jsonl", path="x.jsonl", domain="poetry")
    with pytest.raises(ConfigError, match=r"domain_map\['gsm'\] must be one of"):
        SourceConfig(kind="verl", path="x.parquet", domain_map={"gsm": "maths"})
    with pytest.raises(ConfigError, match="task_config names 'lcm', which is not in tasks"):
        SourceConfig(kind="reasoning_gym", tasks=("gcd",), task_config={"lcm": {}})
