"""One process of a multi-process test (also imported by the tests for the 1-process reference).

    python worker.py SCENARIO OUT_DIR [--coordinator ... --num-processes N --process-id I]

Scenarios write OUT_DIR/<scenario>.<process id>.npz; the test compares them across
processes and with the same functions run in the test's own single process (8 devices).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

CFG_KW = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=2)
BATCH, SEQ, GROUP = 8, 6, 4


def _cfg():
    from prorl_jax.model.config import ModelConfig

    return ModelConfig(**CFG_KW)


def host_params(cfg, seed=0):
    """The same random host params in every process (numpy, so no PRNG compile)."""
    import jax
    import numpy as np

    from prorl_jax.model import qwen

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype),
                        qwen.param_shapes(cfg))


def place(tree, shardings):
    """Global arrays from host copies every process holds: each places only its shards."""
    import jax

    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                        tree, shardings)


def to_host(tree):
    """Full host copies of (possibly non-addressable) global arrays, identical everywhere."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                        tree)


def flat(tree, prefix=""):
    import jax

    return {prefix + jax.tree_util.keystr(k): v
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def global_batch():
    import numpy as np

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, CFG_KW["vocab_size"], (BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, :2] = mask[5, :4] = mask[6, :1] = 0  # left padding, on both processes' rows
    return tokens, mask


def numerics() -> dict:
    """Sharded forward and one SGD step on a data=2 x fsdp=4 mesh; host gathers; keep mask."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prorl_jax import distributed, losses
    from prorl_jax.model import qwen
    from prorl_jax.sharding import TRAIN_RULES, make_mesh, shard_batch, use_rules

    cfg = _cfg()
    mesh = make_mesh(data=2, fsdp=4)
    params = place(host_params(cfg), qwen.param_shardings(cfg, mesh, TRAIN_RULES))
    tokens, mask = global_batch()
    rows = distributed.local_rows(tokens.shape, mesh, TRAIN_RULES, ("batch", "seq"))
    tok = distributed.process_local_batch(tokens[rows], mesh, TRAIN_RULES, ("batch", "seq"))
    msk = distributed.process_local_batch(mask[rows], mesh, TRAIN_RULES, ("batch", "seq"))

    def loss_fn(p, tok, msk):
        logits = qwen.forward(cfg, p, tok, msk)  # [B, T, V]
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        picked = jnp.take_along_axis(logp, tok[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]
        w = msk[:, 1:] * msk[:, :-1]
        return -(picked * w).sum() / w.sum(), logits

    @jax.jit
    def step(p, tok, msk):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, tok, msk)
        return loss, logits, jax.tree.map(lambda a, g: a - 0.5 * g, p, grads)

    with use_rules(mesh, TRAIN_RULES):
        loss, logits, new_params = step(params, tok, msk)
    out = {"loss": np.asarray(to_host(loss)), "logits": to_host(logits),
           "rows": np.asarray([rows.start, rows.stop])}
    out.update(flat(to_host(new_params), "new"))

    # Rewards and lengths are produced per process for its own rows, then gathered.
    rng = np.random.default_rng(7)
    rewards = rng.choice([0.0, 0.25, 1.0], BATCH).astype(np.float32)
    rewards[:GROUP] = 1.0  # group 0: all equal, must be dropped
    lengths = rng.integers(1, 50, BATCH).astype(np.int32)
    out["rewards"] = distributed.gather_rows(rewards[rows], rows, BATCH)
    out["lengths"] = distributed.gather_rows(lengths[rows], rows, BATCH)
    out["keep"] = np.asarray(losses.group_keep_mask(out["rewards"], GROUP))
    out["adv"] = np.asarray(losses.grpo_advantages(out["rewards"], GROUP))
    out["stacked"] = distributed.host_allgather(np.asarray([distributed.process_index()]))
    # Batches that do not divide data x fsdp = 8: 6 rows go over 'data' only (3 per
    # process), 5 rows are replicated (each process supplies all of them).
    for n in (6, 5):
        x = np.arange(n * 3, dtype=np.int32).reshape(n, 3)
        r = distributed.local_rows(x.shape, mesh, TRAIN_RULES, ("batch", None))
        placed = distributed.process_local_batch(x[r], mesh, TRAIN_RULES, ("batch", None),
                                                 global_rows=n)
        out[f"uneven{n}"] = to_host(placed)
        out[f"uneven{n}_gathered"] = distributed.gather_rows(x[r], r, n)
        out[f"uneven{n}_rows"] = np.asarray([r.start, r.stop])
    # Host work split per process (the reward scoring of rollouts): 9 rows -> 4 + 5,
    # gathered back whole on every process.
    share = distributed.split_rows(BATCH + 1)
    out["share_rows"] = np.asarray([share.start, share.stop])
    out["shared"] = distributed.gather_rows(np.arange(BATCH + 1.0)[share], share, BATCH + 1)
    # A host batch every process holds whole, placed per process, batch on axis 1.
    x = np.arange(2 * BATCH * 3, dtype=np.int32).reshape(2, BATCH, 3)
    out["placed_axis1"] = to_host(shard_batch(x, mesh, TRAIN_RULES, (None, "batch", None)))
    distributed.check_same("the keep mask", out["keep"])  # the same everywhere: passes
    if distributed.process_count() > 1:
        try:
            distributed.check_same("a per-process value",
                                   np.asarray([distributed.process_index()]))
        except RuntimeError as e:
            out["disagree_error"] = np.asarray(str(e))
        try:
            make_mesh(data=1, fsdp=4)
        except Exception as e:  # noqa: BLE001
            out["mesh_error"] = np.asarray(f"{type(e).__name__}: {e}")
    return out


def checkpoints(directory: str) -> dict:
    """Orbax save + restore of FSDP-sharded params over all 8 devices, and save_hf."""
    import jax
    import numpy as np

    from prorl_jax.checkpoint import Checkpointer
    from prorl_jax.model import hf, qwen
    from prorl_jax.sharding import TRAIN_RULES, make_mesh

    cfg = _cfg()
    mesh = make_mesh(fsdp=8)
    shardings = qwen.param_shardings(cfg, mesh, TRAIN_RULES)
    host = host_params(cfg, seed=3)
    params = place(host, shardings)
    state = {"step": place(np.asarray(5, np.int32), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))}
    root = pathlib.Path(directory)
    ckpt = Checkpointer(root / "ckpt", keep_last=2, async_save=False)
    ckpt.save(5, params, state, {"note": "two processes", "step": 5})
    ckpt.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            (params, state))
    got, got_state, meta = ckpt.restore(params_target=abstract[0], state_target=abstract[1])
    ckpt.close()
    hf.save_hf(str(root / "hf"), cfg, params)
    # load_hf straight into the two-process mesh: each process builds only its own blocks,
    # each a copy of a slice viewed in the memory-mapped file. Count the bytes it copies.
    copied = {}
    real = jax.make_array_from_callback

    def counting(shape, sharding, block):
        param = len(copied)
        copied[param] = {}

        def wrapped(index):
            arr = block(index)
            copied[param][tuple((s.start, s.stop) for s in index)] = arr.nbytes
            return arr
        return real(shape, sharding, wrapped)

    jax.make_array_from_callback = counting
    try:
        _, loaded = hf.load_hf(str(root / "hf"), mesh=mesh, rules=TRAIN_RULES)
    finally:
        jax.make_array_from_callback = real
    out_bytes = sum(sum(blocks.values()) for blocks in copied.values())
    out = flat(to_host(got), "restored")
    out.update(flat(to_host(loaded), "loaded"))
    out["shardings_kept"] = np.asarray(all(
        a.sharding == b for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings),
                                        strict=True)))
    out["step"] = np.asarray(to_host(got_state["step"]))
    out["meta"] = np.asarray(repr(sorted(meta.items())))
    out["addressable"] = np.asarray(all(x.is_fully_addressable for x in jax.tree.leaves(got)))
    out["load_bytes"] = np.asarray([out_bytes, sum(x.nbytes for x in jax.tree.leaves(host))])
    return out


def sampling() -> dict:
    """generate (both engines) and sample_and_score on a data=2 x fsdp=4 mesh.

    The params start in the trainer's layout (TRAIN_RULES: FSDP-sharded over both
    processes); the sampler reshards them. 5 prompts x n=2 = 10 rows: not a multiple of
    the 8 batch shards, and more rows than the continuous engine's 8 decode slots, so
    rows are refilled into freed slots and the tail is compacted.
    """
    import numpy as np

    from prorl_jax import distributed
    from prorl_jax.model import qwen
    from prorl_jax.sampling import SamplingParams, generate
    from prorl_jax.sampling.scoring import sample_and_score
    from prorl_jax.sharding import TRAIN_RULES, make_mesh

    cfg = _cfg()
    mesh = make_mesh(data=2, fsdp=4)
    params = place(host_params(cfg, seed=5), qwen.param_shardings(cfg, mesh, TRAIN_RULES))
    rng = np.random.default_rng(11)
    prompts = [rng.integers(1, CFG_KW["vocab_size"], k).tolist() for k in (3, 7, 1, 12, 5)]
    # 12 stop ids of 128: rows stop after a few tokens or run to the budget.
    params_s = SamplingParams(temperature=1.0, max_new_tokens=8, n=2,
                              stop_token_ids=tuple(range(100, 112)))
    out = {}
    for engine in ("static", "continuous"):
        kw = {"decode_slots": 8} if engine == "continuous" else {}
        got = generate(cfg, params, prompts, params_s, seed=3, mesh=mesh, engine=engine, **kw)
        for field in ("tokens", "logprobs", "lengths", "finished"):
            out[f"{engine}.{field}"] = getattr(got, field)
    seen = []

    def score(items):
        seen.extend(gt for _, _, gt in items)  # the rows this process scored
        return [len(text) + gt / 100 for _, text, gt in items]

    for engine in ("static", "continuous"):
        seen.clear()
        scored = sample_and_score(cfg, params, prompts, params_s, seed=3, mesh=mesh,
                                  engine=engine, item=lambda r, text: ("x", text, r),
                                  decode=lambda ids: " ".join(map(str, ids)), score=score)
        out[f"scored.{engine}.tokens"] = scored.tokens
        out[f"scored.{engine}.scores"] = scored.scores
        out[f"scored.{engine}.texts"] = np.asarray(scored.texts)
        out[f"scored.{engine}.mine"] = np.asarray(sorted(seen))
    out["split"] = np.asarray([distributed.split_rows(10).start, distributed.split_rows(10).stop])
    return out


def die(kill: bool) -> dict:
    """Process 1 fails (one line, exit 2) or is SIGKILLed while process 0 is in a collective."""
    import os
    import signal

    import numpy as np

    from prorl_jax import distributed
    from prorl_jax.errors import DataError

    distributed.host_allgather(np.zeros(2))
    if distributed.process_index() == 1:
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise DataError("process 1 found a corrupt shard")
    distributed.host_allgather(np.zeros(2))  # never completes: its peer is gone
    return {}


def main(argv: list[str]) -> int:
    from prorl_jax import distributed

    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=("numerics", "checkpoints", "sampling", "die", "kill",
                                        "bad"))
    p.add_argument("out")
    distributed.add_arguments(p)
    args = p.parse_args(argv)

    def run(args) -> int:
        import numpy as np

        if args.scenario == "numerics":
            out = numerics()
        elif args.scenario == "checkpoints":
            out = checkpoints(args.out)
        elif args.scenario == "sampling":
            out = sampling()
        elif args.scenario == "bad":
            from prorl_jax.errors import ConfigError

            raise ConfigError("rl.kl_coef must be >= 0, got -1")  # as every process would
        else:
            out = die(kill=args.scenario == "kill")
        pid = distributed.process_index()
        np.savez(pathlib.Path(args.out) / f"{args.scenario}.{pid}.npz", **out)
        return 0

    return distributed.run_command(args, args.scenario, run, multi_process=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
