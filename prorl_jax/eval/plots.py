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

from prorl_jax.eval.report import pass_keys

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
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return str(path)


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
