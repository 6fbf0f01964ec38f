"""`prorl-jax convert`: Hugging Face directory <-> Orbax checkpoint.

    prorl-jax convert hf-to-orbax --hf DIR --out DIR [--step N] [--dtype D]
    prorl-jax convert orbax-to-hf --ckpt DIR [--step N] --out DIR [--tokenizer DIR]

No jax import at module level: the dispatcher imports this for `--help`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("hf-to-orbax", help="Hugging Face directory -> Orbax checkpoint")
    a.add_argument("--hf", required=True, metavar="DIR", help="local Hugging Face checkpoint directory")
    a.add_argument("--out", required=True, metavar="DIR", help="Orbax checkpoint directory to write")
    a.add_argument("--step", type=int, default=0, help="step number to save under (default 0)")
    a.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="param dtype (default: the checkpoint's)")
    b = sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> Hugging Face directory")
    b.add_argument("--ckpt", required=True, metavar="DIR", help="Orbax checkpoint directory")
    b.add_argument("--step", type=int, default=None, help="step to export (default: latest)")
    b.add_argument("--out", required=True, metavar="DIR", help="Hugging Face directory to write")
    b.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="copy the tokenizer files of this directory into the output")


def run(args: argparse.Namespace) -> int:
    from prorl_jax.model import hf, orbax_io

    if args.direction == "hf-to-orbax":
        cfg, params = hf.load_hf(args.hf, dtype=args.dtype)
        orbax_io.save_orbax(args.out, cfg, params, step=args.step)
        print(f"wrote {args.out} step {args.step}: {cfg.model_type}, "
              f"{cfg.num_params():,} params in {cfg.param_dtype}")
    else:
        cfg, params, _ = orbax_io.load_orbax(args.ckpt, step=args.step)
        hf.save_hf(args.out, cfg, params, tokenizer_dir=args.tokenizer)
        print(f"wrote {args.out}: {cfg.model_type}, {cfg.num_params():,} params in {cfg.param_dtype}")
    return 0
