"""Two real processes x 4 CPU devices on one jax.distributed run == one process x 8 devices."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_sharded_step_gathers_and_keep_mask_match_one_process(tmp_path, run_worker, worker,
                                                               explain):
    procs = run_worker("numerics", tmp_path)
    assert [p.rc for p in procs] == [0, 0], explain(procs)
    two = [_load(tmp_path / f"numerics.{i}.npz") for i in range(2)]
    # Each process supplied only its own half of the batch (data=2 is the process axis).
    assert two[0]["rows"].tolist() == [0, 4] and two[1]["rows"].tolist() == [4, 8]
    assert two[0]["stacked"].ravel().tolist() == [0, 1]
    # The mesh must span all 8 global devices; 4 is refused naming both numbers.
    msg = str(two[0]["mesh_error"])
    assert msg.startswith("ConfigError") and "= 4 devices" in msg and "8 devices in all" in msg
    # Gathered values are identical on both processes, bit for bit.
    same = {k: two[0][k] for k in two[0]
            if not k.endswith("rows") and k not in ("mesh_error", "disagree_error")}
    _same_bits(same, {k: two[1][k] for k in same})
    assert [two[i]["uneven6_rows"].tolist() for i in range(2)] == [[0, 3], [3, 6]]
    assert [two[i]["uneven5_rows"].tolist() for i in range(2)] == [[0, 5], [0, 5]]
    for n in (6, 5):
        x = np.arange(n * 3, dtype=np.int32).reshape(n, 3)
        np.testing.assert_array_equal(two[0][f"uneven{n}"], x)
        np.testing.assert_array_equal(two[0][f"uneven{n}_gathered"], x)

    # Per-process shares of host rows, gathered whole; a full host batch placed per
    # process; a value the processes disagree on is an error naming the other process.
    assert [two[i]["share_rows"].tolist() for i in range(2)] == [[0, 4], [4, 9]]
    np.testing.assert_array_equal(two[1]["shared"], np.arange(9.0))
    np.testing.assert_array_equal(two[0]["placed_axis1"], np.arange(48).reshape(2, 8, 3))
    assert str(two[0]["disagree_error"]).startswith(
        "processes [1] disagree with process 0 on a per-process value")
    one = worker.numerics()  # this process: 1 process x 8 devices, same mesh shape
    for k in ("rewards", "lengths", "keep", "adv"):
        assert one[k].tobytes() == two[0][k].tobytes(), k
    assert one["keep"].tolist() == [False, True]
    assert one["rows"].tolist() == [0, 8]
    for k in [k for k in one if k == "loss" or k == "logits" or k.startswith("new")]:
        np.testing.assert_allclose(two[0][k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The step moved the params: the comparison above is not of two untouched copies.
    base = worker.flat(worker.host_params(worker._cfg()), "new")
    assert any(not np.allclose(base[k], one[k]) for k in base)


def test_checkpoint_and_save_hf_from_two_processes(tmp_path, run_worker, worker, explain):
    from prorl_jax.checkpoint import restore
    from prorl_jax.model import hf

    procs = run_worker("checkpoints", tmp_path)
    assert [p.rc for p in procs] == [0, 0], explain(procs)
    two = [_load(tmp_path / f"checkpoints.{i}.npz") for i in range(2)]
    # load_hf into fsdp=8 over both processes: each process copied only the slices its 4
    # devices hold (about half of every FSDP-sharded tensor; the small norm scales, which
    # are replicated, in full), never whole tensors.
    for i in range(2):
        read, total = two[i].pop("load_bytes")
        assert 0.45 * total < read < 0.6 * total, (i, read, total)
    _same_bits(two[0], two[1])
    assert not two[0]["addressable"]  # restored into shards spread over both processes
    cfg = worker._cfg()
    host = worker.host_params(cfg, seed=3)
    _same_bits({k: v for k, v in two[0].items() if k.startswith("restored")},
               worker.flat(host, "restored"))
    _same_bits({k: v for k, v in two[0].items() if k.startswith("loaded")},
               worker.flat(host, "loaded"))
    assert two[0]["shardings_kept"]
    assert int(two[0]["step"]) == 5
    assert "two processes" in str(two[0]["meta"])

    # Single-process restore (1 process x 8 devices) of the two-process checkpoint. Orbax
    # needs a target layout when the topology changed; use the same fsdp=8 shardings.
    import jax

    from prorl_jax.model import qwen
    from prorl_jax.sharding import TRAIN_RULES, make_mesh

    mesh = make_mesh(fsdp=8)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          qwen.param_shapes(cfg), qwen.param_shardings(cfg, mesh, TRAIN_RULES))
    step_t = jax.ShapeDtypeStruct((), np.int32, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    params, state, meta = restore(tmp_path / "ckpt", params_target=target,
                                  state_target={"step": step_t})
    _same_bits(worker.flat(worker.to_host(params)), worker.flat(host))
    assert meta == {"note": "two processes", "step": 5} and int(state["step"]) == 5

    # save_hf from two processes == the single-process export, byte for byte.
    hf.save_hf(str(tmp_path / "hf_one"), cfg, host)
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "hf_one").iterdir())
    assert "model.safetensors" in files
    for name in files:
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "hf_one" / name).read_bytes()
    # ... and transformers loads it: its logits are our forward's on the same params.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    tokens, mask = worker.global_batch()
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens[:2], dtype=torch.long)).logits.numpy()
    ours = np.asarray(qwen.forward(cfg, host, tokens[:2]))
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("how", ["die", "kill"])
def test_failed_process_ends_its_peer_without_hanging(tmp_path, run_worker, explain, how):
    procs = run_worker(how, tmp_path, timeout=150,
                       extra=["--heartbeat-timeout", "5", "--shutdown-timeout", "10"])
    p0, p1 = procs
    if how == "die":
        assert p1.rc == 2, explain(procs)
        assert "[process 1/2] prorl-jax die: error: process 1 found a corrupt shard" in p1.stderr
    else:
        assert p1.rc == -9, explain(procs)
    # Process 0 was blocked in a collective with its dead peer: the collective breaks off
    # (gloo sees the closed connection) or, failing that, jax's heartbeat check ends it.
    assert p0.rc != 0, explain(procs)
    assert (f"[process 0/2] prorl-jax {how}: failed: a collective with the other processes broke "
            "off, so a peer process probably died" in p0.stderr
            or "another task died" in p0.stderr), explain(procs)
    assert p0.seconds - p1.seconds < 60, explain(procs)


def test_bad_input_on_every_process_is_one_line_and_exit_2_each(tmp_path, run_worker, explain):
    procs = run_worker("bad", tmp_path, timeout=150)
    assert [p.rc for p in procs] == [2, 2], explain(procs)
    for i, p in enumerate(procs):
        assert (f"[process {i}/2] prorl-jax bad: error: rl.kl_coef must be >= 0, got -1"
                in p.stderr.splitlines()), explain(procs)
        assert "Traceback" not in p.stderr


def test_cli_starts_two_processes_and_refuses_a_single_process_command(tmp_path, run_processes,
                                                                      explain):
    from prorl_jax.distributed import SINGLE_PROCESS_COMMANDS

    out = tmp_path / "ckpt"
    procs = run_processes(["-m", "prorl_jax", "convert", "hf-to-orbax", "--hf",
                           "builtin:demo_base", "--out", str(out), "--step", "1"], timeout=150)
    assert [p.rc for p in procs] == [2, 2], explain(procs)
    for i, p in enumerate(procs):
        lines = [ln for ln in p.stderr.splitlines() if "prorl-jax convert: error:" in ln]
        assert lines == [f"[process {i}/2] prorl-jax convert: error: prorl-jax convert runs as "
                         f"one process, not 2: {SINGLE_PROCESS_COMMANDS['convert']}"
                         ], explain(procs)
    assert not out.exists()  # refused before anything was written


def test_missing_peer_ends_start_up_within_the_init_timeout(tmp_path, run_processes, explain):
    # Only process 1 of 2 is started (num-processes says 2, one launch): nobody hosts
    # the coordinator, so the connection attempt must give up after --init-timeout.
    procs = run_processes(["-m", "prorl_jax", "train", "--run-dir", str(tmp_path / "run")],
                          processes=1, timeout=120,
                          extra=["--num-processes", "2", "--process-id", "1",
                                 "--init-timeout", "4"])
    (p,) = procs
    assert p.rc != 0, explain(procs)
    assert ("[process 1/2] still waiting for all processes to connect to the coordinator "
            "127.0.0.1:") in p.stderr, explain(procs)
    assert "giving up after --init-timeout 4 s" in p.stderr
    assert p.seconds < 60 and not (tmp_path / "run").exists()


def test_sampler_on_two_processes_equals_one_process(tmp_path, run_worker, worker, explain):
    # generate (static and continuous engines) and sample_and_score over a data=2 x fsdp=4
    # mesh spanning both processes: every process reads all rows (tunix #698: no process
    # iterates an array it cannot address), scores only its own share, and gets all scores.
    procs = run_worker("sampling", tmp_path)
    assert [p.rc for p in procs] == [0, 0], explain(procs)
    two = [_load(tmp_path / f"sampling.{i}.npz") for i in range(2)]
    assert two[0]["split"].tolist() == [0, 5] and two[1]["split"].tolist() == [5, 10]
    for engine in ("static", "continuous"):
        assert two[0][f"scored.{engine}.mine"].tolist() == [0, 1, 2, 3, 4]
        assert two[1][f"scored.{engine}.mine"].tolist() == [5, 6, 7, 8, 9]
    shared = {k: v for k, v in two[0].items() if not k.endswith(("mine", "split"))}
    _same_bits(shared, {k: two[1][k] for k in shared})  # identical on both processes

    one = worker.sampling()  # 1 process x 8 devices, the same mesh shape
    assert one["scored.static.mine"].tolist() == list(range(10))
    for k, v in shared.items():
        if k.endswith("logprobs"):
            np.testing.assert_allclose(v, one[k], rtol=0, atol=1e-6, err_msg=k)
        else:
            assert v.dtype == one[k].dtype and v.tobytes() == one[k].tobytes(), k
    # Not a trivial case: rows stop at different lengths, some by a stop id, some by the budget.
    lengths, finished = one["static.lengths"], one["static.finished"]
    assert len(set(lengths.tolist())) > 2 and finished.any() and not finished.all()
    np.testing.assert_array_equal(one["static.tokens"], one["continuous.tokens"])
