"""Where one GRPO update's time goes, op by op, ours next to PyTorch's (issue 18).

Runs bench_train's update (same 40M model, batch, loss and optimizer) for one shape and
profiles a few steps of each side after warm-up:

- ours: `jax.profiler` trace of `make_train_step`, converted with xprof (`pip install
  xprof`; not a dependency of the package), each HLO op's self time matched to its
  `op_name` metadata in the optimized HLO, so that every fusion lands in a model part;
- PyTorch: `torch.profiler` self CPU time per aten op, matmuls split by shape into the lm
  head (a dimension equal to the vocabulary) and the decoder's weight matmuls.

Both are grouped into the same parts: decoder weight matmuls, lm-head matmuls, attention,
everything else (norms, RoPE, SwiGLU, softmax / log-softmax, loss, optimizer, copies).

    python tools/profile_train_step.py --threads 1 --shape 1x8x64x192
    python tools/profile_train_step.py --threads 1 --shape 2x2x128x384
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (pins the cores from --threads before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from profile_parts import PARTS, op_names, our_part, self_times, torch_part  # noqa: E402

import prorl_jax as pj  # noqa: E402
from prorl_jax.rl.state import make_optimizer  # noqa: E402
from prorl_jax.rl.update import make_train_step  # noqa: E402


def profile_ours(cfg, params, batch, P: int, steps: int, out_dir: str) -> dict[str, float]:
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        sys.exit("profile_train_step: needs xprof to read the jax trace (pip install xprof)")

    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    optimizer = make_optimizer(bt.OPTIM)
    opt_state = optimizer.init(params)
    step = make_train_step(cfg, bt.RL, optimizer, prompt_len=P, temperature=1.2)
    for _ in range(2):
        params, opt_state, m = step(params, opt_state, jb)
        jax.block_until_ready(m)
    names = op_names(step.lower(params, opt_state, jb).compile().as_text())
    jax.profiler.start_trace(out_dir)
    for _ in range(steps):
        params, opt_state, m = step(params, opt_state, jb)
        jax.block_until_ready(m)
    jax.profiler.stop_trace()
    xplane = glob.glob(os.path.join(out_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "trace_viewer", {})
    trace = json.loads(data if isinstance(data, str) else data.decode())
    parts = collections.Counter()
    for name, us in self_times(trace).items():
        parts[our_part(name, names.get(name, ""))] += us / steps / 1e6
        if name not in names:  # e.g. a recompiled program whose op numbering differs
            parts["(ops not found in the HLO)"] += us / steps / 1e6
    return parts


def profile_torch(hf_dir, batch, P: int, steps: int, vocab: int) -> dict[str, float]:
    model = bt.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                attn_implementation="sdpa").train()
    opt, _ = bt.torch_optimizer(model)
    micro = bt.torch_micro_batches(batch)
    for _ in range(2):
        bt.torch_step(model, opt, micro, P, 1.2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        for _ in range(steps):
            bt.torch_step(model, opt, micro, P, 1.2)
    parts = collections.Counter()
    for ev in prof.key_averages(group_by_input_shape=True):
        parts[torch_part(ev.key, ev.input_shapes, vocab)] += ev.self_cpu_time_total / steps / 1e6
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1x8x64x192", help="MxbxPxR, as bench_train")
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per side")
    ap.add_argument("--threads", type=int, default=None, help="see tools/bench_common.py")
    args = ap.parse_args()
    m, b, P, R = (int(x) for x in args.shape.split("x"))
    torch.manual_seed(0)
    src = bt.Qwen2ForCausalLM(bt.Qwen2Config(**bt.SMALL)).to(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "hf")
        src.save_pretrained(hf_dir)
        cfg, params = pj.load_hf(hf_dir, dtype="float32")
        batch = bt.make_batch(cfg, params, m, b, P, R, 1.2, np.random.default_rng(0))
        ours = profile_ours(cfg, params, batch, P, args.steps, os.path.join(tmp, "trace"))
        theirs = profile_torch(hf_dir, batch, P, args.steps, cfg.vocab_size)
    print(f"# shape {args.shape}, {bt._THREADS} threads, load {os.getloadavg()[0]:.2f}; "
          f"self time per step under the profilers, mean of {args.steps} steps")
    print("| part | ours s | PyTorch s | ours / PyTorch |")
    print("|---|---:|---:|---:|")
    total_ours = sum(v for k, v in ours.items() if k in PARTS)
    for part in (*PARTS, "total"):
        o = total_ours if part == "total" else ours[part]
        t = sum(theirs.values()) if part == "total" else theirs[part]
        print(f"| {part} | {o:.3f} | {t:.3f} | {o / t if t else float('nan'):.2f} |")
    unmatched = ours["(ops not found in the HLO)"]
    print(f"# ours: {unmatched:.3f} s per step of ops without a match in the compiled HLO "
          f"(counted under 'everything else'); a large share makes the split unreliable")


if __name__ == "__main__":
    main()
