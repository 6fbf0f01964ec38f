"""pass@k evaluation: estimator, per-prompt results, reports, plots and the sampling runner.

The estimator, store and report pieces need only numpy; the runner (which pulls in jax and
the sampler) and the plots (matplotlib) load on first use, so `prorl-jax eval --help` and
`from prorl_jax.eval import pass_at_k` stay fast.
"""

import importlib

from prorl_jax.eval.passk import (
    DEFAULT_THRESHOLD,
    EvalError,
    parse_ks,
    pass_at_k,
    pass_at_k_curve,
    successes,
)
from prorl_jax.eval.report import (
    boundary_report,
    build_report,
    classify_boundary,
    render_markdown,
    summarize,
    validation_metrics,
    write_report,
)
from prorl_jax.eval.store import PromptResult, append_results, read_results, record_task

_LAZY = {
    "EvalSettings": "prorl_jax.eval.runner",
    "evaluate_records": "prorl_jax.eval.runner",
    "validate_records": "prorl_jax.eval.runner",
    "run_evaluation": "prorl_jax.eval.runner",
    "tokenizer_decoder": "prorl_jax.eval.runner",
    "load_data_spec": "prorl_jax.eval.data_spec",
    "parse_data_spec": "prorl_jax.eval.data_spec",
    "plot_pass_at_k": "prorl_jax.eval.plots",
    "plot_report": "prorl_jax.eval.plots",
}

__all__ = [
    "DEFAULT_THRESHOLD", "EvalError", "EvalSettings", "PromptResult", "append_results",
    "boundary_report", "build_report", "classify_boundary", "evaluate_records",
    "load_data_spec", "parse_data_spec", "parse_ks", "pass_at_k", "pass_at_k_curve",
    "plot_pass_at_k", "plot_report", "read_results", "record_task", "render_markdown",
    "run_evaluation", "successes", "summarize", "tokenizer_decoder", "validate_records",
    "validation_metrics", "write_report",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prorl_jax.eval' has no attribute {name!r}")


def __dir__():
    return __all__
