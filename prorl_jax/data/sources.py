"""Loading one configured data source into validated prompt records.

Kinds (SourceConfig.kind):
  jsonl / json / parquet  rows in the record schema: {id?, domain?, prompt, ground_truth, meta?};
                          a missing domain falls back to SourceConfig.domain.
  verl                    verl-format rows: data_source, prompt (chat list), ability,
                          reward_model {ground_truth, style}, extra_info; JSONL/JSON/parquet.
  reasoning_gym           generated on the fly (reasoning_gym_source.py).

A bad row (missing field, wrong type, unknown domain) raises a DataError naming the file and
line, or, with on_bad_record="skip", is dropped and counted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from prorl_jax.data.readers import expand_paths, read_rows
from prorl_jax.data.records import DOMAINS, Record, make_record
from prorl_jax.errors import DataError

if TYPE_CHECKING:
    from prorl_jax.config import SourceConfig

log = logging.getLogger(__name__)

# verl `ability` values -> domain (matched lower-case, exactly).
ABILITY_DOMAINS = {
    "math": "math", "code": "code", "coding": "code", "stem": "stem", "science": "stem",
    "physics": "stem", "chemistry": "stem", "biology": "stem", "logic": "reasoning_gym",
    "reasoning_gym": "reasoning_gym", "ifeval": "ifeval", "instruction_following": "ifeval",
    "instruction-following": "ifeval",
}
# verl `data_source` substrings -> domain (lower-case; the first rule that matches wins).
DATA_SOURCE_RULES = (
    (("reasoning_gym", "reasoning-gym", "reasoninggym"), "reasoning_gym"),
    (("ifeval", "instruction_following", "llama-nemotron-if"), "ifeval"),
    (("gpqa", "scp", "sciq", "stem", "science", "mmlu"), "stem"),
    (("code", "apps", "taco", "leetcode", "primeintellect", "kodcode", "livecodebench",
      "humaneval", "mbpp"), "code"),
    (("math", "gsm8k", "aime", "amc", "numina", "deepscaler", "olympiad"), "math"),
)
SKIP_MESSAGES_KEPT = 20  # how many skip reasons a SourceData keeps for the log


@dataclasses.dataclass
class SourceData:
    """Result of reading one source: its records and what was skipped."""

    name: str
    records: list[Record]
    skipped: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)  # first skip reasons


def source_name(cfg: SourceConfig) -> str:
    """The name a source goes by in ids, logs and metrics."""
    if cfg.name:
        return cfg.name
    if cfg.kind == "reasoning_gym":
        return "reasoning_gym"
    base = os.path.basename(cfg.path.rstrip("/*")) or cfg.path
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".parquet"):
        base = base.removesuffix(suffix)
    return base


def domain_for_verl(data_source: Any, ability: Any, domain_map: dict,
                    default: str | None) -> str | None:
    """Picks the reward domain of a verl row.

    Order: the user's domain_map (data_source, then ability, exact), the built-in ability
    table, the built-in data_source substring rules, then the source's default domain.

    Returns:
      A domain name, or None when nothing matches.
    """
    for key in (data_source, ability):
        if isinstance(key, str) and key in domain_map:
            return domain_map[key]
    if isinstance(ability, str) and ability.lower() in ABILITY_DOMAINS:
        return ABILITY_DOMAINS[ability.lower()]
    if isinstance(data_source, str):
        ds = data_source.lower()
        for needles, dom in DATA_SOURCE_RULES:
            if any(n in ds for n in needles):
                return dom
    return default


def verl_row_to_record(row: dict, default_id: str, *, domain_map: dict | None = None,
                       default_domain: str | None = None) -> Record:
    """Converts one verl-format row into a record.

    Args:
      row: {data_source, prompt, ability, reward_model: {ground_truth, style}, extra_info}.
      default_id: the id when the row has no "id" field.
      domain_map: user mapping data_source/ability -> domain.
      default_domain: domain when neither the map nor the built-in rules match.

    Returns:
      The record; meta keeps data_source, ability, style and extra_info.

    Raises:
      ValueError: naming the missing or malformed field.
    """
    for field in ("prompt", "reward_model"):
        if row.get(field) is None:
            raise ValueError(f"missing field {field!r}")
    rm = row["reward_model"]
    if not isinstance(rm, dict):
        raise ValueError(f"field 'reward_model' must be an object, got {type(rm).__name__}")
    if rm.get("ground_truth") is None:
        raise ValueError("missing field 'reward_model.ground_truth'")
    data_source, ability = row.get("data_source"), row.get("ability")
    domain = domain_for_verl(data_source, ability, domain_map or {}, default_domain)
    if domain is None:
        raise ValueError(f"unknown domain for data_source={data_source!r}, ability={ability!r} "
                         f"(map it with domain_map to one of {', '.join(DOMAINS)})")
    extra = row.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"field 'extra_info' must be an object, got {type(extra).__name__}")
    rid = row.get("id") if row.get("id") is not None else default_id
    meta = {"data_source": data_source, "ability": ability, "style": rm.get("style"),
            "extra_info": extra or {}}
    return make_record(rid, domain, row["prompt"], rm["ground_truth"], meta)


def schema_row_to_record(row: dict, default_id: str, *,
                         default_domain: str | None = None) -> Record:
    """Converts one record-schema row into a record.

    Args:
      row: {id?, domain?, prompt, ground_truth, meta?}.
      default_id: the id when the row has no "id" field.
      default_domain: the domain when the row has none.

    Keys other than id, domain, prompt, ground_truth and meta are kept in meta.

    Raises:
      ValueError: naming the missing or malformed field.
    """
    for field in ("prompt", "ground_truth"):
        if row.get(field) is None:
            raise ValueError(f"missing field {field!r}")
    domain = row.get("domain") if row.get("domain") is not None else default_domain
    if domain is None:
        raise ValueError("missing field 'domain' (and the source sets no default domain)")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"field 'meta' must be an object, got {type(meta).__name__}")
    extra = {k: v for k, v in row.items()
             if k not in ("id", "domain", "prompt", "ground_truth", "meta") and v is not None}
    rid = row.get("id") if row.get("id") is not None else default_id
    return make_record(rid, domain, row["prompt"], row["ground_truth"], {**extra, **(meta or {})})


def read_source(cfg: SourceConfig, *, on_bad_record: str = "error") -> SourceData:
    """Loads one source and reports what was skipped.

    Args:
      cfg: the source.
      on_bad_record: "error" (raise DataError naming file and line) or "skip" (drop, count).

    Returns:
      SourceData with the records in file order (or generation order).

    Raises:
      DataError: a bad file or row (when not skipping), or no records at all.
      ConfigError: a bad reasoning_gym task configuration.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    name = source_name(cfg)
    if cfg.kind == "reasoning_gym":
        from prorl_jax.data.reasoning_gym_source import load_reasoning_gym

        data = SourceData(name, load_reasoning_gym(cfg))
    else:
        data = _read_files(cfg, name, on_bad_record)
    if not data.records:
        what = cfg.path or ", ".join(cfg.tasks)
        extra = f" ({data.skipped} bad records skipped, e.g. {data.problems[0]})" if data.skipped else ""
        raise DataError(f"{what}: the dataset is empty{extra}")
    if data.skipped:
        log.warning("data source %s: skipped %d bad records; first: %s",
                    name, data.skipped, "; ".join(data.problems[:3]))
    return data


def _read_files(cfg: SourceConfig, name: str, on_bad_record: str) -> SourceData:
    convert = verl_row_to_record if cfg.kind == "verl" else schema_row_to_record
    kwargs = {"default_domain": cfg.domain}
    if cfg.kind == "verl":
        kwargs["domain_map"] = dict(cfg.domain_map)
    data = SourceData(name, [])
    paths = expand_paths(cfg.path)
    for path in paths:
        raw = read_rows(path, on_bad_record=on_bad_record)
        problems = list(raw.skipped)
        prefix = name
        if len(paths) > 1:  # default ids must stay unique across the files of one source
            prefix = f"{name}:{source_name(dataclasses.replace(cfg, name=None, path=path))}"
        for row, where, key in zip(raw.rows, raw.where, raw.keys):
            try:
                data.records.append(convert(row, f"{prefix}:{key}", **kwargs))
            except ValueError as e:
                if on_bad_record == "error":
                    raise DataError(f"{where}: {e}") from None
                problems.append(f"{where}: {e}")
            if cfg.limit and len(data.records) >= cfg.limit:
                break
        data.skipped += len(problems)
        data.problems.extend(problems[:max(0, SKIP_MESSAGES_KEPT - len(data.problems))])
        if cfg.limit and len(data.records) >= cfg.limit:
            break
    return data


def load_source(source_cfg: SourceConfig, *, on_bad_record: str = "error") -> list[Record]:
    """Loads one source's records (see `read_source` for the skip count).

    Args:
      source_cfg: the source.
      on_bad_record: "error" or "skip".

    Returns:
      The records, in file order.
    """
    return read_source(source_cfg, on_bad_record=on_bad_record).records
