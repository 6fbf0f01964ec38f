"""The reasoning-boundary report of a training run (config `boundary`, docs/evaluation.md).

ProRL's claim is that prolonged RL makes a model solve problems its base never solves at
any number of attempts. To show it on a run's own held-out prompts, the trainer samples
the base policy `boundary.n` times per prompt before step 1 and the final policy after the
last step, with the same settings, and this module writes the comparison:

    RUN_DIR/boundary/samples/base.jsonl, final.jsonl   per-prompt samples and rewards
    RUN_DIR/boundary/samples/settings.json             the settings both were sampled with
    RUN_DIR/boundary/results.json, report.md           pass@k for k = 1 ... n, per-prompt
                                                       verdicts, answer format vs accuracy,
                                                       overlap with the training data
    RUN_DIR/boundary/plots/*.png                       pass@k curves, per-prompt scatter

The base samples are saved before training starts, so a resumed run compares against the
same base even after reference resets have replaced it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from collections.abc import Sequence

from prorl_jax.errors import ConfigError, DataError
from prorl_jax.eval import report as report_lib
from prorl_jax.eval.runner import record_dict
from prorl_jax.eval.store import PromptResult, read_results, record_fingerprint

log = logging.getLogger(__name__)

WARMUP_DATA_FILE = "warmup_data.json"  # in a base model's directory (tools/make_demo_base.py)


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def settings(cfg) -> dict:
    """What the samples depend on besides the policy: a resume must sample the same way."""
    b = cfg.boundary
    return {"num_prompts": b.num_prompts, "n": b.n, "temperature": b.temperature,
            "top_p": b.top_p, "max_new_tokens": b.max_new_tokens, "seed": cfg.seed,
            "max_prompt_tokens": cfg.sampling.max_prompt_tokens}


def _dir(run_dir) -> pathlib.Path:
    return pathlib.Path(run_dir) / "boundary"


def _samples_path(run_dir, label: str) -> pathlib.Path:
    return _dir(run_dir) / "samples" / f"{label}.jsonl"


def stored(run_dir, label: str, cfg, records: Sequence) -> list[PromptResult] | None:
    """The saved samples of `label` ("base" or "final") in `records` order, or None when
    there are none.

    Raises:
      ConfigError: samples made with other settings or for other prompts (the comparison
        would be meaningless); the message names the directory and the difference.
    """
    path = _samples_path(run_dir, label)
    if not path.exists():
        return None
    meta_path = path.parent / "settings.json"
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        old = {}
    new = settings(cfg)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ConfigError(f"boundary.{diff[0]}: {path.parent} holds {label} samples made with "
                          f"{diff[0]}={old.get(diff[0])!r}, not {new[diff[0]]!r}; resume with "
                          f"the run's own boundary settings")
    done = read_results(path)
    out = []
    for r in records:
        got = done.get(str(r.id))
        if got is None or got.prompt_hash != record_fingerprint(record_dict(r)):
            raise ConfigError(f"boundary: {path} holds samples of other held-out prompts than "
                              f"data.val_sources gives now (first difference: {r.id!r}); "
                              f"resume with the run's own data.val_sources")
        out.append(got)
    return out


def save(run_dir, label: str, cfg, results: Sequence[PromptResult]) -> pathlib.Path:
    """Writes the samples of `label` and the settings, atomically (tmp + rename)."""
    path = _samples_path(run_dir, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path.parent / "settings.json", json.dumps(settings(cfg), indent=2) + "\n")
    _write_atomic(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n"
                                for r in results))
    return path


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def warmup_prompts(model_dir) -> set[str] | None:
    """The prompt texts the base model was warmed up on, regenerated from the base's
    warmup_data.json ({"sources": [...], "minus": [...]}: data sources, minus the prompts of
    the sources whose prompts the build removed); None when the base does not say.

    Raises:
      ConfigError: a malformed warmup_data.json.
    """
    from prorl_jax.config import SourceConfig, build
    from prorl_jax.data.sources import read_source

    path = pathlib.Path(model_dir) / WARMUP_DATA_FILE
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text())
        srcs = {key: [build(SourceConfig, d, f"{WARMUP_DATA_FILE}:{key}[{i}]")
                      for i, d in enumerate(spec[key])] for key in ("sources", "minus")}
        prompts = {r.prompt for s in srcs["sources"] for r in read_source(s).records}
        minus = {r.prompt for s in srcs["minus"] for r in read_source(s).records}
    except (ValueError, KeyError, TypeError, DataError) as e:
        raise ConfigError(f"{path}: not a warm-up data description ({type(e).__name__}: {e})") \
            from None
    return prompts - minus


def overlap(held_out: Sequence, train_prompts: set[str], warmup: set[str] | None) -> dict:
    """How many held-out prompts occur, by exact text, in the RL training data and in the
    base's warm-up data (None: the base does not describe its warm-up data)."""
    texts = {r.prompt for r in held_out}
    return {"held_out_prompts": len(texts), "rl_training": len(texts & train_prompts),
            "warmup": None if warmup is None else len(texts & warmup)}


def write(run_dir, base: Sequence[PromptResult], final: Sequence[PromptResult], cfg,
          data_overlap: dict, excluded: dict | None = None) -> dict:
    """Writes results.json, report.md and the plots; returns the run summary's part."""
    from prorl_jax.eval.plots import plot_prompt_scatter, plot_report

    n = cfg.boundary.n
    out = _dir(run_dir)
    ks = ks_for(n)
    rep = report_lib.build_report({"base": base, "final": final}, ks, settings=settings(cfg))
    rows = report_lib.prompt_verdicts(base, final, n)
    counts = report_lib.verdict_counts(rows)
    answers = {"base": report_lib.answer_stats(base), "final": report_lib.answer_stats(final)}
    unsolved = [r for r in rows if r["base_pass@k"] == 0]
    summary = {
        "num_prompts": len(rows), "n": n,
        "pass@1": [rep["models"][m]["overall"]["pass@1"] for m in ("base", "final")],
        f"pass@{n}": [rep["models"][m]["overall"][f"pass@{n}"] for m in ("base", "final")],
        "base_unsolved": len(unsolved),
        "now_solved": sum(r["pass@k"] > 0 for r in unsolved),
        "well_formed": [answers[m]["well_formed"] for m in ("base", "final")],
        "accuracy_well_formed": [answers[m]["accuracy_well_formed"] for m in ("base", "final")],
        "verdicts": counts, "overlap": data_overlap,
        "excluded_from_training": dict(excluded or {})}
    rep.update(prompts=rows, verdict_counts=counts, answers=answers, headline=summary)
    plots = plot_report(rep, out / "plots", rel_to=out)
    scatter = plot_prompt_scatter(rows, n, out / "plots" / "prompt_scatter.png",
                                  title=f"held-out prompts: pass@1, colored by pass@{n} verdict")
    plots["per prompt"] = os.path.relpath(scatter, out)
    _, md = report_lib.write_report(out, rep, plots, preamble=headline_lines(summary))
    summary["report"] = md
    return summary


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def headline_lines(s: dict) -> list[str]:
    """The report's headline (Markdown)."""
    n, o = s["n"], s["overlap"]
    warm = "not described by the base" if o["warmup"] is None else str(o["warmup"])
    return [f"**{s['num_prompts']} held-out prompts, {n} samples each, base vs final policy.**",
            "",
            f"- pass@1: {_f(s['pass@1'][0])} -> {_f(s['pass@1'][1])}",
            f"- pass@{n}: {_f(s[f'pass@{n}'][0])} -> {_f(s[f'pass@{n}'][1])}",
            f"- {s['now_solved']} of {s['base_unsolved']} prompts the base never solved in "
            f"{n} tries are now solved",
            f"- accuracy among well-formed answers: {_f(s['accuracy_well_formed'][0])} -> "
            f"{_f(s['accuracy_well_formed'][1])} (well-formed share "
            f"{_f(s['well_formed'][0])} -> {_f(s['well_formed'][1])})",
            "- verdicts: " + ", ".join(f"{v} {c}" for v, c in s["verdicts"].items()),
            f"- held-out prompts also in the RL training data: {o['rl_training']}; in the "
            f"base's warm-up data: {warm} (exact text)"]


def summary_lines(s: dict) -> list[str]:
    """What the console shows at the end of a run."""
    n = s["n"]
    return [f"held-out pass@1  {_f(s['pass@1'][0])} -> {_f(s['pass@1'][1])}  (accuracy among "
            f"well-formed answers {_f(s['accuracy_well_formed'][0])} -> "
            f"{_f(s['accuracy_well_formed'][1])})",
            f"held-out pass@{n} {_f(s[f'pass@{n}'][0])} -> {_f(s[f'pass@{n}'][1])}",
            f"{s['now_solved']} of {s['base_unsolved']} prompts the base never solved in {n} "
            f"tries are now solved; report: {s['report']}"]
