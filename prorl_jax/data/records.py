"""The prompt record every source produces, and the checks that keep its ground truth honest.

A record is what the trainer samples, the chat formatter renders and the reward verifier of
its domain scores. Its ground truth is validated per domain when it is built, so a file with
the wrong shape of answer fails at load time with its file and line instead of silently
giving reward 0 for the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

DOMAINS = ("math", "code", "stem", "reasoning_gym", "ifeval")
CHAT_ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Record:
    """One training / validation prompt (docs/CONTRACTS.md, "Prompt record").

    Attributes:
      id: stable identifier (unique within its source).
      domain: one of DOMAINS; picks the reward verifier and the instruction suffix.
      prompt: plain text, or chat messages [{"role": ..., "content": ...}, ...].
      ground_truth: JSON-safe value the domain's verifier understands.
      meta: JSON-safe extra information (source, task, original fields).
    """

    id: str
    domain: str
    prompt: str | list[dict[str, str]]
    ground_truth: Any
    meta: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """Returns the record as a plain JSON-serializable dict (the JSONL schema)."""
        return {"id": self.id, "domain": self.domain, "prompt": self.prompt,
                "ground_truth": self.ground_truth, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        """Builds and validates a record from `to_dict()` output.

        Raises:
          ValueError: a field is missing or has the wrong type (message names the field).
        """
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("id", "domain", "prompt", "ground_truth") if d.get(k) is None]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        return make_record(d["id"], d["domain"], d["prompt"], d["ground_truth"],
                           d.get("meta") or {})


def make_record(id: Any, domain: Any, prompt: Any, ground_truth: Any, meta: Any = None) -> Record:
    """Validates and normalizes the parts of a record.

    Args:
      id: str or int (ints are converted, since many datasets number their rows).
      domain: one of DOMAINS.
      prompt: non-empty text or a non-empty list of chat messages.
      ground_truth: domain-specific, see `normalize_ground_truth`.
      meta: dict or None.

    Returns:
      A Record whose fields are all JSON-safe.

    Raises:
      ValueError: with a one-line message naming the faulty field.
    """
    if isinstance(id, bool) or not isinstance(id, str | int):
        raise ValueError(f"field 'id' must be a string, got {type(id).__name__}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"field 'meta' must be an object, got {type(meta).__name__}")
    return Record(id=str(id), domain=domain, prompt=validate_prompt(prompt),
                  ground_truth=normalize_ground_truth(domain, ground_truth),
                  meta=json_safe(meta))


def validate_prompt(prompt: Any) -> str | list[dict[str, str]]:
    """Checks a prompt is non-empty text or a list of {"role", "content"} chat messages.

    Returns:
      The prompt, chat messages reduced to their role and content.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("field 'prompt' is empty")
        return prompt
    if not isinstance(prompt, list | tuple):
        raise ValueError(f"field 'prompt' must be text or a list of chat messages, "
                         f"got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("field 'prompt' is an empty list of messages")
    messages = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"prompt message {i} must be an object with a string 'content'")
        if m.get("role") not in CHAT_ROLES:
            raise ValueError(f"prompt message {i} has role {m.get('role')!r} "
                             f"(expected one of {', '.join(CHAT_ROLES)})")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ValueError("field 'prompt' has no non-empty user message")
    return messages


def _parse_json_text(value: Any, what: str) -> Any:
    """verl / Eurus store structured ground truths as JSON strings; decode those."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} ground_truth is a string but not valid JSON ({e.msg})") from None
    return value


def normalize_ground_truth(domain: str, gt: Any) -> Any:
    """Checks that `gt` has the shape the `domain` verifier expects, and normalizes it.

    math / stem: an answer string (numbers are converted to their text).
    code: {"inputs": [...], "outputs": [...], optional "fn_name"} (or its JSON string).
    reasoning_gym: {"task": str, "entry": dict} (or its JSON string).
    ifeval: {"instruction_id_list": [str, ...], "kwargs": [dict, ...]} (or its JSON string);
      None-valued kwargs are removed, as IFEval's reference checker does, because Arrow
      files pad every kwargs dict with the union of all keys.

    Raises:
      ValueError: naming what is wrong.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})")
    if gt is None:
        raise ValueError("missing field 'ground_truth'")
    if domain in ("math", "stem"):
        if isinstance(gt, bool) or not isinstance(gt, str | int | float):
            raise ValueError(f"{domain} ground_truth must be an answer string, got {type(gt).__name__}")
        if isinstance(gt, float) and not math.isfinite(gt):
            raise ValueError(f"{domain} ground_truth is not a finite number: {gt}")
        text = gt if isinstance(gt, str) else repr(gt)
        if not text.strip():
            raise ValueError(f"{domain} ground_truth is an empty string")
        return text
    gt = _parse_json_text(gt, domain)
    if not isinstance(gt, dict):
        raise ValueError(f"{domain} ground_truth must be an object, got {type(gt).__name__}")
    if domain == "code":
        ins, outs = gt.get("inputs"), gt.get("outputs")
        if not isinstance(ins, list | tuple) or not isinstance(outs, list | tuple):
            raise ValueError("code ground_truth needs 'inputs' and 'outputs' lists")
        if len(ins) != len(outs) or not ins:
            raise ValueError(f"code ground_truth has {len(ins)} inputs and {len(outs)} outputs "
                             "(need the same, non-zero number)")
        if gt.get("fn_name") is not None and not isinstance(gt["fn_name"], str):
            raise ValueError("code ground_truth 'fn_name' must be a string")
        return json_safe({k: v for k, v in gt.items() if v is not None})
    if domain == "reasoning_gym":
        if not isinstance(gt.get("task"), str) or not isinstance(gt.get("entry"), dict):
            raise ValueError("reasoning_gym ground_truth must be {\"task\": str, \"entry\": object}")
        return {"task": gt["task"], "entry": json_safe(gt["entry"])}
    if domain == "ifeval":
        ids, kwargs = gt.get("instruction_id_list"), gt.get("kwargs")
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids) or not ids:
            raise ValueError("ifeval ground_truth needs a non-empty 'instruction_id_list' of strings")
        if kwargs is None:
            kwargs = [{} for _ in ids]
        if not isinstance(kwargs, list | tuple) or len(kwargs) != len(ids):
            raise ValueError("ifeval ground_truth 'kwargs' must be a list as long as "
                             "'instruction_id_list'")
        clean = []
        for k in kwargs:
            if k is not None and not isinstance(k, dict):
                raise ValueError("ifeval ground_truth 'kwargs' entries must be objects")
            clean.append({n: v for n, v in (k or {}).items() if v is not None})
        return {"instruction_id_list": list(ids), "kwargs": json_safe(clean)}
    raise AssertionError(domain)


def json_safe(x: Any) -> Any:
    """Converts `x` into exactly what a JSON round trip would give back.

    Tuples and sets become lists, numpy scalars and arrays become Python values, dict keys
    become strings (as json.dumps writes them). Doing it up front means a ground truth is the
    same object whether it comes straight from the loader or back from a JSONL file or a
    checkpoint, so the verifier never sees two versions of one record.

    Raises:
      ValueError: for values JSON cannot represent (NaN, infinities, arbitrary objects).
    """
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, str):
        return str(x)  # numpy.str_ is a str subclass; keep plain str
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"value {x} cannot be stored as JSON")
        return float(x)
    if isinstance(x, dict):
        out = {_json_key(k): json_safe(v) for k, v in x.items()}
        if len(out) != len(x):  # e.g. keys 1 and "1": JSON would silently keep only one
            raise ValueError("dict keys collide once written as JSON strings")
        return out
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, set | frozenset):
        items = [json_safe(v) for v in x]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    # numpy values (and anything else with .tolist()/.item()) without importing numpy here.
    if hasattr(x, "tolist") and callable(x.tolist):
        return json_safe(x.tolist())
    if hasattr(x, "item") and callable(x.item):
        return json_safe(x.item())
    raise ValueError(f"value of type {type(x).__name__} cannot be stored as JSON")


def _json_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    if isinstance(k, int | float):
        return json.dumps(json_safe(k))
    if hasattr(k, "item"):
        return _json_key(k.item())
    raise ValueError(f"dict key of type {type(k).__name__} cannot be stored as JSON")
