"""Grouping a profile's op times into model parts (tools/profile_train_step.py).

Pure functions, no jax or torch import, so tests can load them without pinning cores.
"""

from __future__ import annotations

import collections
import re

PARTS = ("decoder weight matmuls", "lm-head matmuls", "attention", "everything else")
_SKIP = ("ThreadpoolListener", "ThunkExecutor", "$")  # runtime spans that contain the ops


def self_times(trace: dict) -> dict[str, float]:
    """HLO op name -> self time (us) summed over the trace (children subtracted)."""
    events = [e for e in trace["traceEvents"]
              if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(_SKIP)]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e["tid"])].append(e)
    out = collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                out[stack[-1]["name"]] -= e["dur"]
            out[e["name"]] += e["dur"]
            stack.append(e)
    return out


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its op_name metadata (the jax source op)."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name=\"(.*?)\"",
                         hlo_text, re.M):
        out.setdefault(m.group(1), m.group(2))
    return out


def our_part(hlo_name: str, op_name: str) -> str:
    is_dot = hlo_name.startswith("ynn_fusion") or "dot_general" in op_name
    if "/attention/" in op_name:
        return "attention"
    if is_dot and re.search(r"/(mlp|attn)/(gate|up|down|q|k|v|o)/", op_name):
        return "decoder weight matmuls"
    if is_dot and ("BTV" in op_name or ",DV->" in op_name):
        return "lm-head matmuls"
    return "everything else"


def torch_part(name: str, shapes, vocab: int) -> str:
    if "attention" in name:
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        dims = {d for s in shapes or () for d in (s or ())}
        return "lm-head matmuls" if vocab in dims else "decoder weight matmuls"
    return "everything else"
