"""Reading raw rows from JSONL / JSON / parquet files through the `datasets` library.

The fast path is `datasets` (Arrow, memory-mapped, cached). When it rejects a JSON file,
the file is re-read line by line with the standard library so that the error names the
exact line, or so that the bad lines can be skipped and counted (on_bad_record="skip").

Locations in messages: "file.jsonl:7" is a 1-based text line; "file.parquet row 3" and
"file.json record 3" are 0-based row indices, as `datasets` numbers them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

from prorl_jax.errors import DataError

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclasses.dataclass
class RawRows:
    """Rows of one file. `where[i]` names row i for error messages."""

    path: str
    rows: list[dict]
    where: list[str]
    skipped: list[str]  # one message per bad line that was skipped

    @property
    def keys(self) -> list[str]:
        """A stable per-row key (line or row number) that skipping bad lines does not shift."""
        return [w.rsplit(":", 1)[1] if w.startswith(f"{self.path}:") else w.rsplit(" ", 1)[1]
                for w in self.where]


def expand_paths(pattern: str) -> list[str]:
    """A file, a directory (its JSON/parquet files) or a glob pattern -> sorted file list.

    Raises:
      DataError: when nothing matches.
    """
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, f) for f in os.listdir(pattern)
                 if f.endswith(JSON_SUFFIXES + PARQUET_SUFFIXES)]
    elif any(c in pattern for c in "*?["):
        files = glob.glob(pattern)
    else:
        if not os.path.isfile(pattern):
            raise DataError(f"{pattern}: data file not found")
        files = [pattern]
    if not files:
        raise DataError(f"{pattern}: no data files match")
    return sorted(files)


def read_rows(path: str, *, on_bad_record: str = "error") -> RawRows:
    """Reads every row of one JSONL / JSON / parquet file as a plain dict.

    Args:
      path: the file; its suffix picks the format.
      on_bad_record: "error" raises on the first unparsable line; "skip" drops it and
        records a message in `.skipped`.

    Returns:
      RawRows with rows in file order.

    Raises:
      DataError: unknown suffix, unreadable file, malformed line (naming file and line).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    name = path.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return _read_parquet(path)
    if name.endswith(JSON_SUFFIXES):
        return _read_json(path, on_bad_record)
    raise DataError(f"{path}: unknown file type (expected one of "
                    f"{', '.join(JSON_SUFFIXES + PARQUET_SUFFIXES)})")


def _read_parquet(path: str) -> RawRows:
    import datasets

    try:
        ds = datasets.Dataset.from_parquet(path)
    except Exception as e:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read parquet file ({type(e).__name__}: {e})") from None
    rows = ds.to_list()
    return RawRows(path, rows, [f"{path} row {i}" for i in range(len(rows))], [])


def _read_json(path: str, on_bad_record: str) -> RawRows:
    import datasets

    try:
        ds = datasets.load_dataset("json", data_files=path, split="train")
        rows = ds.to_list()
    except Exception:  # noqa: BLE001 - any failure: find the bad line ourselves
        return _read_json_stdlib(path, on_bad_record)
    return RawRows(path, rows, _json_locations(path, len(rows)), [])


def _open_text(path: str):
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_locations(path: str, n: int) -> list[str]:
    """Maps row i to its 1-based line for JSONL files (datasets skips blank lines)."""
    try:
        with _open_text(path) as f:
            head = f.read(1).lstrip()
            if head == "[":
                return [f"{path} record {i}" for i in range(n)]
            f.seek(0)
            lines = [ln for ln, text in enumerate(f, 1) if text.strip()]
    except (OSError, UnicodeDecodeError):
        lines = []
    if len(lines) != n:
        return [f"{path} record {i}" for i in range(n)]
    return [f"{path}:{ln}" for ln in lines]


def _read_json_stdlib(path: str, on_bad_record: str) -> RawRows:
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read file ({e})") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        rows, where, skipped = [], [], []
        for i, row in enumerate(data):
            loc = f"{path} record {i}"
            if isinstance(row, dict):
                rows.append(row)
                where.append(loc)
            elif on_bad_record == "skip":
                skipped.append(f"{loc}: expected a JSON object, got {type(row).__name__}")
            else:
                raise DataError(f"{loc}: expected a JSON object, got {type(row).__name__}")
        return RawRows(path, rows, where, skipped)
    rows, where, skipped = [], [], []
    # Split on "\n" only: str.splitlines() would also split inside strings that hold a raw
    # U+2028, which JSON allows.
    for ln, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        loc = f"{path}:{ln}"
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else \
                f"expected a JSON object, got {type(row).__name__}"
        except json.JSONDecodeError as e:
            problem = f"malformed JSON ({e.msg} at column {e.colno})"
        if problem is None:
            rows.append(row)
            where.append(loc)
        elif on_bad_record == "skip":
            skipped.append(f"{loc}: {problem}")
        else:
            raise DataError(f"{loc}: {problem}")
    return RawRows(path, rows, where, skipped)
