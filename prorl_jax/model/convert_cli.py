"""`prorl-jax convert`: Hugging Face directory <-> Orbax checkpoint.

    prorl-jax convert hf-to-orbax --hf DIR --out DIR [--step N] [--dtype D]
    prorl-jax convert orbax-to-hf --ckpt DIR [--step N] --out DIR [--tokenizer DIR] [--force]

orbax-to-hf copies a tokenizer into the output: --tokenizer, or else the one recorded at
training time (the "tokenizer_dir" of the checkpoint's meta, or model.path in the
config.yaml of the run the checkpoint belongs to). Without one it says so: a Hugging Face
directory without a tokenizer cannot be sampled or evaluated.

No jax import at module level: the dispatcher imports this for `--help`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from prorl_jax.errors import CheckpointError, DamagedCheckpointError, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("hf-to-orbax", help="Hugging Face directory -> Orbax checkpoint")
    a.add_argument("--hf", required=True, metavar="DIR",
                   help="local Hugging Face checkpoint directory, or builtin:demo_base")
    a.add_argument("--out", required=True, metavar="DIR", help="Orbax checkpoint directory to write")
    a.add_argument("--step", type=int, default=0, help="step number to save under (default 0)")
    a.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="param dtype (default: the checkpoint's)")
    b = sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> Hugging Face directory")
    b.add_argument("--ckpt", required=True, metavar="DIR",
                   help="Orbax checkpoint directory: RUN_DIR/checkpoints (or just RUN_DIR)")
    b.add_argument("--step", type=int, default=None, help="step to export (default: latest)")
    b.add_argument("--out", required=True, metavar="DIR", help="Hugging Face directory to write")
    b.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="copy the tokenizer files of this directory (or builtin:NAME) into the "
                        "output (default: the tokenizer recorded at training time)")
    b.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out (its model files are replaced)")


def recorded_tokenizer(ckpt_dir: str, meta: dict) -> tuple[str | None, str]:
    """The tokenizer a checkpoint was trained with, and where that was read.

    Looks at meta["tokenizer_dir"] (written by hf-to-orbax), then at model.path in the
    config.yaml next to the checkpoint directory (a training run's RUN_DIR/config.yaml).
    Returns (None, why) when neither names a directory with a tokenizer.
    """
    from prorl_jax.paths import resolve_model_dir
    from prorl_jax.tokenizer import has_tokenizer

    candidates = []
    if isinstance(meta.get("tokenizer_dir"), str):
        candidates.append((meta["tokenizer_dir"], "the checkpoint's meta"))
    run_config = pathlib.Path(ckpt_dir).absolute().parent / "config.yaml"
    if run_config.is_file():
        import yaml

        try:
            model = (yaml.safe_load(run_config.read_text()) or {}).get("model") or {}
        except (yaml.YAMLError, AttributeError):
            model = {}
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            candidates.append((model["path"], str(run_config)))
    tried = []
    for spec, source in candidates:
        try:
            path = resolve_model_dir(spec)
        except CheckpointError:
            tried.append(f"{spec} (from {source}) does not exist")
            continue
        if has_tokenizer(path):
            return path, source
        tried.append(f"{spec} (from {source}) has no tokenizer")
    return None, "; ".join(tried) or "neither the meta nor a run config.yaml names one"


def _check_hf_out(out: str, force: bool) -> None:
    from prorl_jax.paths import check_output_dir

    check_output_dir(out, "--out")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise UserError(f"--out {out} exists and is not empty; pick another directory, or "
                        "pass --force to replace its model files")


def run(args: argparse.Namespace) -> int:
    from prorl_jax.paths import check_output_dir, resolve_model_dir

    if args.direction == "hf-to-orbax":
        hf_dir = resolve_model_dir(args.hf, "Hugging Face directory")
        check_output_dir(args.out, "--out")
        from prorl_jax.model import hf, orbax_io
        from prorl_jax.tokenizer import has_tokenizer

        cfg, params = hf.load_hf(hf_dir, dtype=args.dtype)
        meta = {"tokenizer_dir": os.path.abspath(hf_dir)} if has_tokenizer(hf_dir) else {}
        orbax_io.save_orbax(args.out, cfg, params, step=args.step, meta=meta)
        print(f"wrote {args.out} step {args.step}: {cfg.model_type}, "
              f"{cfg.num_params():,} params in {cfg.param_dtype}")
        return 0

    if (pathlib.Path(args.ckpt) / "checkpoints").is_dir() and \
            (pathlib.Path(args.ckpt) / "config.yaml").is_file():
        args.ckpt = str(pathlib.Path(args.ckpt) / "checkpoints")  # a run directory was given
    _check_hf_out(args.out, args.force)
    tokenizer = resolve_model_dir(args.tokenizer, "--tokenizer") if args.tokenizer else None
    from prorl_jax import checkpoint
    from prorl_jax.model import hf, orbax_io

    try:
        step, meta = checkpoint.restore_meta(args.ckpt, args.step)
        cfg, params, _ = orbax_io.load_orbax(args.ckpt, step=step)
    except DamagedCheckpointError as e:
        if e.fallback is None:
            raise
        raise DamagedCheckpointError(f"{e}: export that one with --ckpt {args.ckpt} --step "
                                     f"{e.fallback}", e.step, e.fallback) from None
    if tokenizer is None:
        tokenizer, source = recorded_tokenizer(args.ckpt, meta)
        if tokenizer is None:
            print(f"prorl-jax convert: warning: no tokenizer known for {args.ckpt} ({source}); "
                  f"{args.out} will hold no tokenizer, so nothing can sample from it: pass "
                  "--tokenizer DIR (the base model the run started from)", file=sys.stderr)
        else:
            print(f"tokenizer: {tokenizer} (recorded in {source})")
    hf.save_hf(args.out, cfg, params, tokenizer_dir=tokenizer)
    print(f"wrote {args.out} (step {step}): {cfg.model_type}, {cfg.num_params():,} params in "
          f"{cfg.param_dtype}")
    return 0
