"""Aggregate per-prompt results into pass@k tables, classify reasoning boundaries, write reports.

A summary of one model is a plain JSON-safe dict:

    {"overall": GROUP, "domains": {domain: GROUP}, "tasks": {task: GROUP}}
    GROUP = {"num_prompts": P, "samples_per_prompt": n_min, "mean_reward": x,
             "pass@1": ..., "pass@2": ..., ...}            (tasks also carry "domain")

pass@k of a group is the mean over its prompts of the per-prompt unbiased estimate.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prorl_jax.eval.passk import DEFAULT_THRESHOLD, EvalError, pass_at_k_curve
from prorl_jax.eval.store import PromptResult

VERDICTS = ("expanded", "improved", "unchanged", "unsolved", "diminish", "shrunk")
VERDICT_MEANING = {
    "expanded": "base pass@k_max = 0, this model > 0: solves what the base never does",
    "improved": "pass@k_max rose (base already > 0)",
    "unchanged": "pass@k_max equal (both > 0)",
    "unsolved": "pass@k_max = 0 for both",
    "diminish": "pass@1 rose while pass@k_max fell (the paper's diminish pattern)",
    "shrunk": "pass@k_max fell, pass@1 did not rise",
}


def pass_keys(group: Mapping[str, Any]) -> list[int]:
    """The k values present in a GROUP dict, sorted."""
    return sorted(int(key[5:]) for key in group if key.startswith("pass@"))


def summarize_group(results: Sequence[PromptResult], ks: Sequence[int],
                    threshold: float = DEFAULT_THRESHOLD) -> dict:
    """pass@k and mean reward over a set of prompts.

    Args:
      results: per-prompt results (each with at least max(ks) rewards).
      ks: the k values.
      threshold: a sample succeeds when its reward >= threshold.

    Returns:
      a GROUP dict (see the module docstring).
    """
    curve = pass_at_k_curve([r.rewards for r in results], ks, threshold)
    group = {"num_prompts": curve["num_problems"],
             "samples_per_prompt": min((len(r.rewards) for r in results), default=0),
             "mean_reward": curve["mean_reward"]}
    group.update({f"pass@{k}": v for k, v in curve["pass@k"].items()})
    return group


def summarize(results: Sequence[PromptResult], ks: Sequence[int],
              threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Overall, per-domain and per-task pass@k of one model.

    Args:
      results: per-prompt results of one model.
      ks: the k values; every prompt needs at least max(ks) samples.
      threshold: success threshold for continuous rewards.

    Returns:
      {"overall": GROUP, "domains": {...}, "tasks": {...}} with keys sorted.

    Raises:
      EvalError: a prompt has fewer than max(ks) samples.
    """
    if ks and results:
        short = min(results, key=lambda r: len(r.rewards))
        if len(short.rewards) < max(ks):
            raise EvalError(f"prompt {short.id!r} has {len(short.rewards)} samples, fewer than "
                            f"k={max(ks)}")
    by_domain: dict[str, list[PromptResult]] = defaultdict(list)
    by_task: dict[str, list[PromptResult]] = defaultdict(list)
    task_domains: dict[str, set[str]] = defaultdict(set)
    for r in results:
        by_domain[r.domain].append(r)
        by_task[r.task].append(r)
        task_domains[r.task].add(r.domain)
    tasks = {}
    for task in sorted(by_task):
        group = summarize_group(by_task[task], ks, threshold)
        group["domain"] = "/".join(sorted(task_domains[task]))
        tasks[task] = group
    return {"overall": summarize_group(results, ks, threshold),
            "domains": {d: summarize_group(by_domain[d], ks, threshold) for d in sorted(by_domain)},
            "tasks": tasks}


def validation_metrics(results: Sequence[PromptResult], threshold: float = DEFAULT_THRESHOLD,
                       prefix: str = "val/") -> dict[str, float]:
    """Flat pass@1 / mean-reward metrics, overall and per domain (for training logs).

    Names follow the trainer's metric names ("reward/mean", "reward/<domain>").

    Args:
      results: per-prompt results.
      threshold: success threshold.
      prefix: prepended to every key.

    Returns:
      {prefix+"pass@1": x, prefix+"reward/mean": y, prefix+"pass@1/<domain>": ...,
      prefix+"reward/<domain>": ...}; empty when there are no results.
    """
    if not results:
        return {}
    summary = summarize(results, [1], threshold)
    out = {f"{prefix}pass@1": summary["overall"]["pass@1"],
           f"{prefix}reward/mean": summary["overall"]["mean_reward"]}
    for domain, group in summary["domains"].items():
        out[f"{prefix}pass@1/{domain}"] = group["pass@1"]
        out[f"{prefix}reward/{domain}"] = group["mean_reward"]
    return out


def classify_boundary(base_p1: float, base_pk: float, p1: float, pk: float,
                      tol: float = 1e-9) -> str:
    """Verdict for one task: how a model's reasoning boundary moved relative to the base.

    Args:
      base_p1, base_pk: the base model's pass@1 and pass@k_max on the task.
      p1, pk: the other model's pass@1 and pass@k_max.
      tol: differences within tol count as equal (the estimates are averages of floats).

    Returns:
      one of VERDICTS (see VERDICT_MEANING).
    """
    if base_pk <= tol:
        return "expanded" if pk > tol else "unsolved"
    if pk < base_pk - tol:
        return "diminish" if p1 > base_p1 + tol else "shrunk"
    if pk > base_pk + tol:
        return "improved"
    return "unchanged"


def boundary_report(summaries: Mapping[str, dict], base: str | None = None) -> list[dict]:
    """Compare every model with the base, task by task, at the largest common k.

    Args:
      summaries: {model label: summary} in order; the first is the base unless `base` says.
      base: label of the base model.

    Returns:
      rows {"task", "domain", "model", "k_max", "base_pass@1", "pass@1", "base_pass@k_max",
      "pass@k_max", "verdict"}, for tasks present in both models.
    """
    labels = list(summaries)
    if not labels:
        return []
    base = labels[0] if base is None else base
    base_tasks = summaries[base]["tasks"]
    rows = []
    for label in labels:
        if label == base:
            continue
        for task, group in summaries[label]["tasks"].items():
            if task not in base_tasks:
                continue
            bgroup = base_tasks[task]
            common = sorted(set(pass_keys(group)) & set(pass_keys(bgroup)))
            if not common or 1 not in common:
                continue
            k_max = common[-1]
            row = {"task": task, "domain": group.get("domain", ""), "model": label,
                   "k_max": k_max, "base_pass@1": bgroup["pass@1"], "pass@1": group["pass@1"],
                   "base_pass@k_max": bgroup[f"pass@{k_max}"],
                   "pass@k_max": group[f"pass@{k_max}"]}
            row["verdict"] = classify_boundary(row["base_pass@1"], row["base_pass@k_max"],
                                               row["pass@1"], row["pass@k_max"])
            rows.append(row)
    return rows


def prompt_verdicts(base: Sequence[PromptResult], other: Sequence[PromptResult], k: int,
                    threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Per-prompt verdicts: how each prompt's pass@k moved from the base to another model.

    Args:
      base, other: per-prompt results of the two models; prompts are matched by id and
        only prompts present in both count.
      k: the k of the comparison (every prompt needs >= k samples in both).
      threshold: a sample succeeds when its reward >= threshold.

    Returns:
      rows {"id", "task", "base_pass@1", "pass@1", "base_pass@k", "pass@k", "verdict"} in
      the order of `other` (verdicts from `classify_boundary`).
    """
    by_id = {r.id: r for r in base}
    rows = []
    for r in other:
        b = by_id.get(r.id)
        if b is None:
            continue
        if min(len(r.rewards), len(b.rewards)) < k:
            raise EvalError(f"prompt {r.id!r} has fewer than k={k} samples")
        bc = pass_at_k_curve([b.rewards], [1, k], threshold)["pass@k"]
        oc = pass_at_k_curve([r.rewards], [1, k], threshold)["pass@k"]
        row = {"id": r.id, "task": r.task, "base_pass@1": bc[1], "pass@1": oc[1],
               "base_pass@k": bc[k], "pass@k": oc[k]}
        row["verdict"] = classify_boundary(bc[1], bc[k], oc[1], oc[k])
        rows.append(row)
    return rows


def verdict_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{verdict: number of rows} for every verdict in VERDICTS (zeros included)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for r in rows:
        counts[r["verdict"]] += 1
    return counts


def answer_stats(results: Sequence[PromptResult], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """How often a model's answers are well formed, and how often the well-formed ones are
    right: separates learning the skill from learning the answer format.

    A sample is well formed when its domain's extractor (rewards.extract.answer_text) finds
    an answer in it; it is right when its reward >= threshold.

    Args:
      results: per-prompt results with completions.
      threshold: success threshold.

    Returns:
      {"samples", "well_formed" (share of samples), "accuracy_well_formed" (share of the
      well-formed samples that are right; NaN when none is well formed)}.
    """
    from prorl_jax.rewards.extract import answer_text

    samples = formed = right = 0
    for r in results:
        if len(r.completions) != len(r.rewards):
            raise EvalError(f"prompt {r.id!r}: answer_stats needs the completions")
        for text, reward in zip(r.completions, r.rewards):
            samples += 1
            if answer_text(r.domain, text) is not None:
                formed += 1
                right += reward >= threshold
    return {"samples": samples, "well_formed": formed / samples if samples else math.nan,
            "accuracy_well_formed": right / formed if formed else math.nan}


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100.0 * x:.1f}"


def _group_table(first_header: str, rows: list[tuple[str, str, dict]], ks: list[int]) -> list[str]:
    header = [first_header, "model", "prompts", "mean reward (%)", *[f"pass@{k} (%)" for k in ks]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, label, group in rows:
        cells = [name, label, str(group["num_prompts"]), _pct(group["mean_reward"]),
                 *[_pct(group.get(f"pass@{k}", float("nan"))) for k in ks]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def passk_lines(report: Mapping[str, Any]) -> list[str]:
    """pass@k of every model, overall and per task, as Markdown tables (what the CLI prints).

    Args:
      report: the dict written to results.json (see `build_report`).
    """
    summaries, ks = report["models"], report["ks"]
    labels = list(summaries)
    tasks = sorted({t for lb in labels for t in summaries[lb]["tasks"]})
    return [*_group_table("set", [("all", lb, summaries[lb]["overall"]) for lb in labels], ks),
            "", *_group_table("task", [(t, lb, summaries[lb]["tasks"][t]) for t in tasks
                                       for lb in labels if t in summaries[lb]["tasks"]], ks)]


def boundary_lines(rows: list[dict], base: str) -> list[str]:
    """The boundary comparison as Markdown lines (also what the CLI prints)."""
    if not rows:
        return ["No model to compare with the base."]
    lines = [f"Base model: `{base}`. Verdicts compare pass@1 and pass@k_max per task.", "",
             "| task | model | base pass@1 | pass@1 | k_max | base pass@k_max | pass@k_max | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {_pct(r['base_pass@1'])} | "
                     f"{_pct(r['pass@1'])} | {r['k_max']} | {_pct(r['base_pass@k_max'])} | "
                     f"{_pct(r['pass@k_max'])} | **{r['verdict']}** |")
    counts = defaultdict(int)
    for r in rows:
        counts[(r["model"], r["verdict"])] += 1
    lines += ["", "| model | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    for label in dict.fromkeys(r["model"] for r in rows):
        lines.append(f"| {label} | " + " | ".join(str(counts[(label, v)]) for v in VERDICTS) + " |")
    lines += [""] + [f"- **{v}**: {VERDICT_MEANING[v]}" for v in VERDICTS]
    return lines


def render_markdown(report: Mapping[str, Any], plot_files: Mapping[str, str] | None = None,
                    preamble: Sequence[str] = ()) -> str:
    """The Markdown report.

    Args:
      report: the dict written to results.json (see `build_report`).
      plot_files: {task: relative PNG path} to link under the tables.
      preamble: Markdown lines placed under the title (a headline).

    Returns:
      Markdown text.
    """
    summaries = report["models"]
    labels = list(summaries)
    ks = report["ks"]
    s = report.get("settings", {})
    lines = ["# pass@k evaluation", ""]
    if preamble:
        lines += [*preamble, ""]
    if s:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()), ""]
    lines += [f"Success threshold: reward >= {report['threshold']}. pass@k is the unbiased "
              "estimator 1 - C(n-c, k)/C(n, k) averaged over prompts; values in %.", ""]
    lines += ["## Models", ""] + [f"- `{label}`: {path}" for label, path in
                                  report.get("model_paths", {}).items()] + [""]
    lines += ["## Overall", ""]
    lines += _group_table("set", [("all", lb, summaries[lb]["overall"]) for lb in labels], ks)
    lines += ["", "## Per domain", ""]
    domains = sorted({d for lb in labels for d in summaries[lb]["domains"]})
    lines += _group_table("domain", [(d, lb, summaries[lb]["domains"][d]) for d in domains
                                     for lb in labels if d in summaries[lb]["domains"]], ks)
    lines += ["", "## Per task", ""]
    tasks = sorted({t for lb in labels for t in summaries[lb]["tasks"]})
    lines += _group_table("task", [(t, lb, summaries[lb]["tasks"][t]) for t in tasks
                                   for lb in labels if t in summaries[lb]["tasks"]], ks)
    lines += ["", "## Reasoning boundary", ""]
    lines += boundary_lines(report["boundary"], labels[0])
    if plot_files:
        lines += ["", "## pass@k curves", ""]
        lines += [f"![{task}]({path})" for task, path in plot_files.items()]
    return "\n".join(lines) + "\n"


def build_report(results_by_model: Mapping[str, Sequence[PromptResult]], ks: Sequence[int],
                 threshold: float = DEFAULT_THRESHOLD, settings: Mapping[str, Any] | None = None,
                 model_paths: Mapping[str, str] | None = None) -> dict:
    """Summaries of every model plus the boundary comparison, as one JSON-safe dict.

    Args:
      results_by_model: {label: per-prompt results}; the first label is the base.
      ks: the k values.
      threshold: success threshold.
      settings: sampling settings to record.
      model_paths: {label: checkpoint path} to record.

    Returns:
      {"ks", "threshold", "settings", "model_paths", "models": {label: summary},
      "boundary": rows}.
    """
    summaries = {label: summarize(res, ks, threshold) for label, res in results_by_model.items()}
    return {"ks": [int(k) for k in ks], "threshold": threshold, "settings": dict(settings or {}),
            "model_paths": dict(model_paths or {}), "models": summaries,
            "boundary": boundary_report(summaries)}


def _json_safe(obj):
    # NaN (an empty group) is not JSON; null is.
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any],
                 plot_files: Mapping[str, str] | None = None,
                 preamble: Sequence[str] = ()) -> tuple[str, str]:
    """Write results.json and report.md (with `preamble` under its title) into out_dir.

    Returns:
      (json path, markdown path).
    """
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    md_path = os.path.join(out_dir, "report.md")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)
        f.write("\n")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(render_markdown(report, plot_files, preamble))
    return json_path, md_path
