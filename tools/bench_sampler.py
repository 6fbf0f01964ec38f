"""Decode throughput of prorl_jax.generate vs transformers' generate, side by side.

Both run the same random Qwen2 checkpoint (built with transformers, loaded into JAX with
load_hf), the same prompts, greedy, float32, no early stop. Runs alternate (ours, theirs,
ours, ...) so that load from other processes hits both alike; the median is reported.

Decode tokens/s = B * (new - 1) / (t(new tokens) - t(1 token)): the difference removes the
prefill and fixed per-call costs. End-to-end tokens/s = B * new / t(new tokens). Each run
also records its process CPU time; on a machine shared with other jobs the CPU-time ratio
says what each sampler costs, the wall-clock one what it got.

Roofline: per decode step the model must read every weight once plus the live KV cache
(K and V of the prompt and the tokens so far: average context prompt + new / 2), and
compute 2 FLOPs per weight-matmul parameter per row plus attention. The step's lower bound
is max(bytes / copy bandwidth, FLOPs / matmul rate), both measured on this machine right
before the runs; the roofline fraction is measured decode tokens/s over B / bound.

    python tools/bench_sampler.py                     # the table in docs/performance.md
    python tools/bench_sampler.py --batches 1 --repeats 1 --new-tokens 16   # smoke run
    python tools/bench_sampler.py --rollout          # the demo trainer's rollout shape

--workload rl compares the continuous engine with the static one on an RL rollout whose
lengths come from a real stopping process: a ~25M random Qwen2 (SMALL with a 512-token
vocabulary), temperature 1, 4 stop ids (a random model stops with probability ~4/512 per
step, so lengths spread geometrically with a tail to the cap), 64 prompts of 16-64 tokens x
n=4, cap 512, both engines under the same KV budget (64 rows of prompt bucket + cap). It
reports useful (generated) tokens/s, the share of decode slot-steps that produced a token,
that both engines returned the same tokens, and the reward-overlap saving of
sampling.scoring.sample_and_score with a verifier costing --verifier-ms per completion.

    python tools/bench_sampler.py --workload rl --threads 2

--rollout times one whole `generate` call of the embedded demo's trainer instead: a ~0.8M
parameter Qwen2 (hidden 128, 4 layers, vocab 100, tied embeddings), 16 prompts of 30-64
tokens, 8 samples each at temperature 1, 8 and 16 new tokens; transformers runs the same
with do_sample=True and num_return_sequences=8 (its samples differ: other random streams).

Threads: `--threads N` (default: every core this process may use) pins the process to N
cores and gives torch N threads (tools/bench_common.py), so both sides get the same cores.
On a machine shared with other jobs use `--threads 1`: multi-threaded runtimes spin-wait
on descheduled threads (torch with 2 threads on a loaded 2-core box measured 4x slower per
step than with 1), which would measure the load, not the samplers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

# Both sides get the same cores; fixed before jax / torch start their pools.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

_THREADS = bench_common.pin(sys.argv[1:], None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import prorl_jax as pj  # noqa: E402

SMALL = bench_common.SMALL
# DeepSeek-R1-Distill-Qwen-1.5B shape (for accelerators).
R1_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
               tie_word_embeddings=False)


def measure_machine(repeats: int = 5) -> dict:
    """Copy bandwidth (bytes read + written per second) and float32 matmul FLOP/s."""
    src = np.ones(64 * 2**20, np.float32)  # 256 MiB: far beyond the caches
    dst = np.empty_like(src)
    copy_s = bench_common.best_time(lambda: np.copyto(dst, src), repeats)
    x = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(x).block_until_ready()
    jax_s = bench_common.best_time(lambda: mm(x).block_until_ready(), repeats)
    t = torch.randn(2048, 2048)
    torch_s = bench_common.best_time(lambda: t @ t, repeats)
    flops = 2 * 2048**3
    return {"bandwidth": 2 * src.nbytes / copy_s, "flops": flops / min(jax_s, torch_s),
            "flops_jax": flops / jax_s, "flops_torch": flops / torch_s}


def step_cost(cfg, batch: int, context: float) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step at the given average context length."""
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    N, K, H = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layer_matmul = D * N * H * 2 + D * K * H * 2 + 3 * D * F  # q, o, k, v, gate/up/down
    matmul_params = L * layer_matmul + D * V  # + lm head (the embedding lookup is a gather)
    all_params = matmul_params + V * D * (0 if cfg.tie_word_embeddings else 1)
    kv_bytes = 2 * L * batch * context * K * H * 4
    flops = 2 * matmul_params * batch + 4 * L * batch * context * N * H
    return all_params * 4 + kv_bytes, flops


def run_ours(cfg, params, prompts, new):
    # The static engine: this table measures decode-step speed with every row running to
    # the cap, where the continuous engine runs the same steps (--workload rl compares them).
    out = pj.generate(cfg, params, prompts, pj.SamplingParams(temperature=0, max_new_tokens=new),
                      engine="static")
    return out.tokens


def run_hf(model, input_ids, new):
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=False, max_new_tokens=new, min_new_tokens=new)
    return out[:, input_ids.shape[1]:].numpy()


def bench_batch(cfg, params, model, batch, prompt_len, new, repeats, rng):
    prompts = rng.integers(1, cfg.vocab_size, size=(batch, prompt_len))
    prompt_list = prompts.tolist()
    input_ids = torch.from_numpy(prompts)
    times = {k: [] for k in ("ours_full", "ours_1", "hf_full", "hf_1")}
    cpu = {k: [] for k in times}  # process CPU seconds: what each side cost, whatever the load
    # Warm-up: compiles our two programs, warms torch's allocator; also checks agreement.
    ours_tokens = run_ours(cfg, params, prompt_list, new)
    hf_tokens = run_hf(model, input_ids, new)
    agree = float(np.mean(ours_tokens == hf_tokens))
    run_ours(cfg, params, prompt_list, 1)
    run_hf(model, input_ids, 1)
    for _ in range(repeats):
        for name, fn in (("ours_full", lambda: run_ours(cfg, params, prompt_list, new)),
                         ("hf_full", lambda: run_hf(model, input_ids, new)),
                         ("ours_1", lambda: run_ours(cfg, params, prompt_list, 1)),
                         ("hf_1", lambda: run_hf(model, input_ids, 1))):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return med, med_cpu, agree


DEMO = dict(vocab_size=100, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True)


def bench_rollout(repeats: int) -> None:
    """Wall and CPU ms of one rollout call at the demo trainer's shape, ours vs transformers."""
    config = Qwen2Config(**DEMO, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, params = pj.load_hf(tmp, dtype="float32")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, cfg.vocab_size, size=int(rng.integers(30, 65))).tolist()
               for _ in range(16)]
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)  # left-padded
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    print(f"# rollout: {cfg.num_params() / 1e6:.2f}M params float32, 16 prompts x 8 samples, "
          f"prompts 30-64 tokens, temperature 1; median of {repeats}")
    print("| new tokens | ours wall ms | transformers wall ms | ratio | ours CPU ms | "
          "transformers CPU ms | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for new in (8, 16):
        sp = pj.SamplingParams(temperature=1.0, max_new_tokens=new, n=8)

        def ours(sp=sp):
            pj.generate(cfg, params, prompts, sp, seed=1, engine="static")

        def theirs(new=new):
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                               num_return_sequences=8, max_new_tokens=new,
                               min_new_tokens=new)

        ours()
        theirs()
        wall = {"ours": [], "theirs": []}
        cpu = {"ours": [], "theirs": []}
        for _ in range(repeats):
            for name, fn in (("ours", ours), ("theirs", theirs)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(1e3 * (time.perf_counter() - t0))
                cpu[name].append(1e3 * (time.process_time() - c0))
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"| {new} | {w['ours']:,.0f} | {w['theirs']:,.0f} | "
              f"{w['theirs'] / w['ours']:.2f}x | {c['ours']:,.0f} | {c['theirs']:,.0f} | "
              f"{c['theirs'] / c['ours']:.2f}x |", flush=True)


def _sleep_verifier(cost_s: float):
    """A verifier of fixed cost per completion that waits as a worker pool does (the
    GIL is free meanwhile); rewards from the text so that both engines can be compared."""
    def score(items):
        time.sleep(cost_s * len(items))
        return [float(len(text) % 2) for _, text, _ in items]
    return score


def _engine_programs() -> int:
    from prorl_jax.sampling import engine as engine_mod

    return sum(f._cache_size() for f in (engine_mod._prefill, engine_mod._insert,
                                         engine_mod._decode_block, engine_mod._compact,
                                         engine_mod._empty_slots))


def bench_rl(args) -> None:
    """Static vs continuous engine on an RL-shaped rollout (see the module docstring)."""
    from prorl_jax.sampling import engine as engine_mod
    from prorl_jax.sampling import sampler
    from prorl_jax.sampling.scoring import sample_and_score

    config = Qwen2Config(**{**SMALL, "vocab_size": 512}, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, params = pj.load_hf(tmp, dtype="float32")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(4, 512, size=int(rng.integers(16, 65))).tolist()
               for _ in range(args.rl_prompts)]
    cap, n, kv_rows = args.new_tokens, 4, 64
    sp = pj.SamplingParams(temperature=1.0, max_new_tokens=cap, n=n, stop_token_ids=(0, 1, 2, 3))
    slot_len = sampler.bucket(max(map(len, prompts)), sampler.MIN_PROMPT_BUCKET) + cap
    budget = kv_rows * slot_len
    print(f"# {cfg.num_params() / 1e6:.1f}M params float32, vocab 512, 4 stop ids, temperature "
          f"1, {len(prompts)} prompts x n={n}, cap {cap}, KV budget {budget} token slots "
          f"({kv_rows} rows); --threads {_THREADS}; load {os.getloadavg()}", flush=True)
    warm = prompts[:16]
    engines = args.rl_engines.split(",")
    for engine in engines:  # compile both engines' programs first
        # --rl-warm full: the continuous engine runs the whole workload at another seed,
        # so that the timed run meets (almost) no new program, as a trainer's later steps
        # do not (the static engine has one program, which 16 prompts compile).
        full = args.rl_warm == "full" and engine == "continuous"
        pj.generate(cfg, params, prompts if full else warm, sp, seed=1,
                    max_batch_tokens=budget, engine=engine)
    score = _sleep_verifier(args.verifier_ms / 1e3)
    results = {}
    for engine in engines:
        # The whole rollout path (sample, decode, score) as the trainer runs it.
        stats = {}
        compiled = _engine_programs()
        t0, c0 = time.perf_counter(), time.process_time()
        res = sample_and_score(cfg, params, prompts, sp, item=lambda r, t: ("math", t, None),
                               decode=lambda ids: " ".join(map(str, ids)), score=score, seed=0,
                               max_batch_tokens=budget, engine=engine, stats=stats)
        cpu = time.process_time() - c0
        wall = res.time_rollout  # sampling only (rows decoded to text meanwhile)
        useful = int(res.lengths.sum())
        if engine == "static":
            rows = sampler.chunk_rows(len(res.lengths), slot_len, budget)
            chunks = [res.lengths[i:i + rows] for i in range(0, len(res.lengths), rows)]
            # Every chunk steps all its rows until its longest row ends; token 0 is prefill.
            slot_steps = sum(rows * (int(c.max()) - 1) for c in chunks)
            decode_tokens = useful - len(res.lengths)
            extra = "chunk maxima " + "/".join(str(int(c.max())) for c in chunks)
        else:
            slot_steps, decode_tokens = stats["slot_steps"], stats["decode_tokens"]
            extra = (f"{stats['blocks']} blocks of <= {engine_mod.DEFAULT_STEPS_PER_SYNC} "
                     f"steps, {_engine_programs() - compiled} programs compiled in the run")
        results[engine] = (res, wall)
        print(f"| {engine} | {useful} | {wall:.1f} | {cpu:.1f} | {useful / wall:,.0f} | "
              f"{decode_tokens / slot_steps:.0%} | {res.time_reward:.2f} s | mean length "
              f"{res.lengths.mean():.0f}, {extra} |", flush=True)
    if len(results) == 2:
        a, b = results["static"][0], results["continuous"][0]
        same = np.array_equal(a.tokens, b.tokens) and np.array_equal(a.lengths, b.lengths)
        print(f"# continuous / static useful tok/s: {results['static'][1] / results['continuous'][1]:.2f}x;"
              f" identical tokens and lengths: {same}, scores: {np.array_equal(a.scores, b.scores)};"
              f" max |logprob diff| {float(np.abs(a.logprobs - b.logprobs).max()):.1e}; verifier "
              f"{args.verifier_ms:g} ms x {len(a.texts)} = {args.verifier_ms * len(a.texts) / 1e3:.1f} s",
              flush=True)
    if args.hf_cb:  # transformers' own continuous batching, same model, stops and cap
        from transformers import ContinuousBatchingConfig, GenerationConfig

        gc = GenerationConfig(max_new_tokens=cap, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, eos_token_id=[0, 1, 2, 3], pad_token_id=0,
                              num_return_sequences=n)
        # Its paged cache under the same KV budget and as many rows at once as our slots.
        page = 32
        cb = ContinuousBatchingConfig(page_size=page, num_blocks=budget // page,
                                      max_requests_per_batch=kv_rows, max_batch_tokens=slot_len,
                                      use_cuda_graph=False, seed=0)

        def hf_run(ps):
            with torch.inference_mode():
                return model.generate_batch(ps, generation_config=gc,
                                            continuous_batching_config=cb, progress_bar=False)
        hf_run(warm[:4])  # its first-call set-up, outside the timing as ours
        ours = results["continuous"][0]
        t0, c0 = time.perf_counter(), time.process_time()
        hf_out = hf_run(prompts)
        hf_wall, hf_cpu = time.perf_counter() - t0, time.process_time() - c0
        hf_lengths = np.array([len(v.generated_tokens) for v in hf_out.values()])
        hf_tokens = int(hf_lengths.sum())
        print(f"| transformers generate_batch | {hf_tokens} | {hf_wall:.1f} | {hf_cpu:.1f} | "
              f"{hf_tokens / hf_wall:,.0f} | - | - | {len(hf_out)} rows, mean length "
              f"{hf_lengths.mean():.0f} (own random streams), scored after |")
        print(f"# continuous / transformers generate_batch useful tok/s: "
              f"{(int(ours.lengths.sum()) / results['continuous'][1]) / (hf_tokens / hf_wall):.2f}x",
              flush=True)
    print(f"# load after: {os.getloadavg()}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="default 128 (512, the cap, with --workload rl)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", choices=("small", "r1-1.5b"), default="small")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=_THREADS,
                    help="cores for both sides (default: all; see tools/bench_common.py)")
    ap.add_argument("--rollout", action="store_true",
                    help="time the demo trainer's rollout shape instead (see above)")
    ap.add_argument("--workload", choices=("decode", "rl"), default="decode",
                    help="rl: continuous vs static engine on an RL rollout (see above)")
    ap.add_argument("--rl-prompts", type=int, default=64, help="--workload rl: prompts")
    ap.add_argument("--verifier-ms", type=float, default=20.0,
                    help="--workload rl: verifier cost per completion in ms")
    ap.add_argument("--rl-engines", default="static,continuous",
                    help="--workload rl: engines to run, in this order")
    ap.add_argument("--rl-warm", choices=("16", "full"), default="16",
                    help="--workload rl: warm up on 16 prompts, or (continuous engine) on "
                         "the whole workload at another seed (no compiles in the timed run)")
    ap.add_argument("--hf-cb", action="store_true",
                    help="--workload rl: also run transformers' model.generate_batch")
    args = ap.parse_args(argv)
    if args.workload == "rl":
        args.new_tokens = args.new_tokens or 512
        print("| engine | useful tokens | rollout wall s | CPU s | useful tok/s | "
              "slot-steps useful | time/reward | notes |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        bench_rl(args)
        return
    args.new_tokens = args.new_tokens or 128
    if args.rollout:
        bench_rollout(max(args.repeats, 5))
        return

    torch_dtype = getattr(torch, args.dtype)
    config = Qwen2Config(**(SMALL if args.shape == "small" else R1_1_5B),
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch_dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, params = pj.load_hf(tmp, dtype=args.dtype)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    machine = measure_machine()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); --threads {_THREADS}")
    print(f"# model: {n_params / 1e6:.1f}M params {args.dtype}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy; median of {args.repeats}")
    print(f"# measured: copy bandwidth {machine['bandwidth'] / 1e9:.1f} GB/s, matmul "
          f"{machine['flops'] / 1e9:.1f} GFLOP/s (jax {machine['flops_jax'] / 1e9:.1f}, "
          f"torch {machine['flops_torch'] / 1e9:.1f})")
    print("| batch | ours decode tok/s | transformers decode tok/s | ratio (wall) | "
          "ratio (CPU time) | ours end-to-end tok/s | transformers end-to-end tok/s | ratio | "
          "bound | roofline tok/s | ours / roofline (wall) | ours / roofline (CPU time) | "
          "tokens agree |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    new = args.new_tokens
    for batch in (int(b) for b in args.batches.split(",")):
        med, cpu, agree = bench_batch(cfg, params, model, batch, args.prompt_len, new,
                                      args.repeats, rng)
        ours_dec = batch * (new - 1) / (med["ours_full"] - med["ours_1"])
        hf_dec = batch * (new - 1) / (med["hf_full"] - med["hf_1"])
        ours_cpu = batch * (new - 1) / (cpu["ours_full"] - cpu["ours_1"])
        hf_cpu = batch * (new - 1) / (cpu["hf_full"] - cpu["hf_1"])
        ours_e2e = batch * new / med["ours_full"]
        hf_e2e = batch * new / med["hf_full"]
        nbytes, flops = step_cost(cfg, batch, args.prompt_len + new / 2)
        t_mem, t_flop = nbytes / machine["bandwidth"], flops / machine["flops"]
        bound = "memory" if t_mem >= t_flop else "compute"
        roof = batch / max(t_mem, t_flop)
        print(f"| {batch} | {ours_dec:,.0f} | {hf_dec:,.0f} | {ours_dec / hf_dec:.2f}x | "
              f"{ours_cpu / hf_cpu:.2f}x | {ours_e2e:,.0f} | {hf_e2e:,.0f} | "
              f"{ours_e2e / hf_e2e:.2f}x | {bound} | {roof:,.0f} | {ours_dec / roof:.0%} | "
              f"{ours_cpu / roof:.0%} | {agree:.0%} |", flush=True)


if __name__ == "__main__":
    main()
