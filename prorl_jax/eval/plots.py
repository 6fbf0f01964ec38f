"""pass@k curves as PNG files: log2 k on the x axis, one line per model, one plot per task.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never picks
or changes the process-wide backend and works without a display.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from prorl_jax.eval.report import VERDICTS, pass_keys

FIGSIZE = (6.0, 4.0)
DPI = 100


def plot_pass_at_k(curves: Mapping[str, Mapping[int, float]], title: str,
                   path: str | os.PathLike) -> str:
    """Draw pass@k against k for several models into one PNG.

    Args:
      curves: {model label: {k: pass@k in [0, 1]}}, lines drawn in this order.
      title: the plot title (usually the task name).
      path: output PNG path (parent directories are created).

    Returns:
      the path written. The image is FIGSIZE * DPI pixels (600 x 400).
    """
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_ks = sorted({int(k) for curve in curves.values() for k in curve})
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [100.0 * curve[k] for k in ks], marker="o", markersize=3, label=label)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.xaxis.set_major_locator(FixedLocator(all_ks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(k) for k in all_ks])
        if len(all_ks) == 1:
            ax.set_xlim(all_ks[0] / 1.5, all_ks[0] * 1.5)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    return _finish(fig, ax, title, path, legend=bool(curves))


def _finish(fig, ax, title: str, path, *, legend: bool) -> str:
    """Title, grid and legend, then the PNG (parent directories created); returns the path."""
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return str(path)


VERDICT_COLORS = {"expanded": "tab:green", "improved": "tab:blue", "unchanged": "tab:gray",
                  "unsolved": "black", "diminish": "tab:orange", "shrunk": "tab:red"}


def plot_prompt_scatter(rows, k: int, path: str | os.PathLike, *, base_label: str = "base",
                        label: str = "final", title: str | None = None) -> str:
    """One point per prompt: its pass@1 (success rate) under the base against under another
    model, colored by its pass@k verdict.

    Per prompt, pass@k at k = n is 0 or 1 (was it ever solved), so the success rates carry
    the spread; the colors say how the boundary moved: "expanded" points sit on the left
    edge (never solved by the base), "shrunk" ones on the bottom edge. Each verdict's count
    is in the legend.

    Args:
      rows: per-prompt verdict rows (report.prompt_verdicts) at this k.
      k: their k.
      path: output PNG path (parent directories are created).
      base_label, label: axis names.
      title: the plot title.

    Returns:
      the path written (600 x 600 pixels).
    """
    fig = Figure(figsize=(FIGSIZE[1] * 1.5, FIGSIZE[1] * 1.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 100], [0, 100], color="0.8", linewidth=1, zorder=0)
    for verdict in VERDICTS:
        pts = [(100.0 * r["base_pass@1"], 100.0 * r["pass@1"]) for r in rows
               if r["verdict"] == verdict]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=18, alpha=0.6, color=VERDICT_COLORS[verdict],
                       label=f"{verdict} at pass@{k} ({len(pts)})")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"{base_label}: success rate per prompt, pass@1 (%)")
    ax.set_ylabel(f"{label}: success rate per prompt, pass@1 (%)")
    return _finish(fig, ax, title or f"per-prompt pass@1, colored by the pass@{k} verdict",
                   path, legend=bool(rows))


def plot_file_name(task: str) -> str:
    """A file-system-safe PNG name for a task."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("._")
    return (stem or "task") + ".png"


def plot_report(report: Mapping, plot_dir: str | os.PathLike,
                rel_to: str | os.PathLike | None = None) -> dict[str, str]:
    """One PNG per task (and one for all prompts) from a report dict (see report.build_report).

    Args:
      report: the evaluation report with "models".
      plot_dir: directory for the PNG files.
      rel_to: make returned paths relative to this directory (for Markdown links).

    Returns:
      {task or "all": PNG path}, "all" first and then tasks sorted.
    """
    models = report["models"]
    groups: dict[str, dict[str, Mapping]] = {"all": {lb: s["overall"] for lb, s in models.items()}}
    for task in sorted({t for s in models.values() for t in s["tasks"]}):
        groups[task] = {lb: s["tasks"][task] for lb, s in models.items() if task in s["tasks"]}
    files = {}
    used: set[str] = set()
    for name, by_model in groups.items():
        curves = {lb: {k: g[f"pass@{k}"] for k in pass_keys(g)} for lb, g in by_model.items()}
        fname = "all_prompts.png" if name == "all" else plot_file_name(name)
        while fname in used:
            fname = "_" + fname
        used.add(fname)
        path = plot_pass_at_k(curves, name if name != "all" else "all prompts",
                              os.path.join(plot_dir, fname))
        files[name] = os.path.relpath(path, rel_to) if rel_to is not None else path
    return files
