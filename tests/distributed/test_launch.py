"""Start-up decisions and single-process behaviour of prorl_jax.distributed (no launches)."""

import argparse
import logging

import jax
import numpy as np
import pytest

from prorl_jax import distributed, sharding
from prorl_jax.distributed import Launch, launch_from_args
from prorl_jax.errors import ConfigError
from prorl_jax.sharding import TRAIN_RULES, make_mesh


def _args(argv=()):
    p = argparse.ArgumentParser()
    distributed.add_arguments(p)
    return p.parse_args(list(argv))


def _none():
    return None


def test_explicit_flags_and_environment():
    got = launch_from_args(_args(["--coordinator", "10.0.0.1:1234", "--num-processes", "4",
                                  "--process-id", "3", "--heartbeat-timeout", "7"]), {}, _none)
    assert got == Launch("explicit", "10.0.0.1:1234", 4, 3, heartbeat_timeout_s=7)
    env = {"JAX_COORDINATOR_ADDRESS": "h:99", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert launch_from_args(_args(), env, _none) == Launch("explicit", "h:99", 2, 1)
    # Flags win over the environment.
    assert launch_from_args(_args(["--process-id", "0"]), env, _none).process_id == 0
    # Nothing set, no cluster: one process, nothing initialised. One process explicit: same.
    assert launch_from_args(_args(), {}, _none) is None
    assert launch_from_args(_args(["--coordinator", "h:1", "--num-processes", "1",
                                   "--process-id", "0"]), {}, _none) is None
    # --single-process overrides everything, detection included.
    assert launch_from_args(_args(["--single-process"]), env, lambda: "slurm") is None


def test_detected_cluster_fills_the_rest():
    assert launch_from_args(_args(), {}, lambda: "slurm") == Launch("slurm")
    got = launch_from_args(_args(["--coordinator", "n0:7777"]), {}, lambda: "tpu")
    assert got == Launch("tpu", coordinator="n0:7777")


@pytest.mark.parametrize("argv, env, match", [
    (["--coordinator", "h:1"], {}, "--coordinator given without --num-processes and "
                                   "--process-id: outside a detected cluster all three"),
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], {},
     r"--process-id 2 is out of range for --num-processes 2 \(ids are 0..1\)"),
    (["--coordinator", "nohostport", "--num-processes", "2", "--process-id", "0"], {},
     "--coordinator must be HOST:PORT, got 'nohostport'"),
    ([], {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not a valid int"),
    (["--init-timeout", "0"], {}, "--init-timeout must be >= 1 second, got 0"),
])
def test_bad_settings_are_one_line_config_errors(argv, env, match):
    with pytest.raises(ConfigError, match=match):
        launch_from_args(_args(argv), env, _none)


def test_detect_cluster_uses_jax_detectors(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.detect_cluster() is None
    slurm = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert distributed.detect_cluster() == "slurm"
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task step: nothing to coordinate
    assert distributed.detect_cluster() is None
    for k in slurm:
        monkeypatch.delenv(k)
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1.0;tcp://10.0.0.1:4000")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.detect_cluster() == "ompi"


def test_initialize_none_is_a_no_op_and_single_process_helpers():
    assert distributed.initialize(None) is False
    assert distributed.is_primary() and distributed.process_count() == 1
    distributed.require_single_process("x")  # one process: allowed
    mesh = make_mesh(data=2, fsdp=4)
    x = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    assert distributed.local_rows(x.shape, mesh, TRAIN_RULES, ("batch", "seq")) == slice(0, 8)
    got = distributed.process_local_batch(x, mesh, TRAIN_RULES, ("batch", "seq"))
    want = sharding.shard_batch(x, mesh, TRAIN_RULES, ("batch", "seq"))
    assert got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), x)
    with pytest.raises(ValueError, match="must supply rows 0:16 .* got 8 rows"):
        distributed.process_local_batch(x, mesh, TRAIN_RULES, ("batch", "seq"), global_rows=16)
    np.testing.assert_array_equal(distributed.host_allgather(x[0]), x[:1])
    np.testing.assert_array_equal(distributed.gather_rows(x, slice(0, 8), 8), x)
    distributed.sync("noop")


def test_run_command_single_process_passes_through():
    assert distributed.run_command(_args(), "train", lambda a: 3) == 3
    with pytest.raises(ConfigError, match="boom"):
        distributed.run_command(_args(), "train",
                                lambda a: (_ for _ in ()).throw(ConfigError("boom")))


def test_non_primary_logging_is_prefixed_warnings_only(monkeypatch, caplog):
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    monkeypatch.setattr(distributed, "process_count", lambda: 4)
    root, ours = logging.getLogger(), logging.getLogger("prorl_jax")
    saved = [(lg, lg.level, list(lg.filters)) for lg in (root, ours)]
    try:
        distributed.setup_logging()
        distributed.setup_logging()  # idempotent: one prefix
        with caplog.at_level(logging.INFO, logger="prorl_jax.rl"):
            logging.getLogger("prorl_jax.rl").info("step done")
            logging.getLogger("prorl_jax.rl").warning("slow verifier")
        assert ours.level == logging.WARNING
        msgs = [r.getMessage() for r in caplog.records]
        assert "[process 1/4] slow verifier" in msgs
    finally:
        for lg, level, filters in saved:
            lg.setLevel(level)
            lg.filters[:] = filters
        for h in root.handlers:
            h.filters[:] = [f for f in h.filters if not isinstance(f, distributed._ProcessPrefix)]


def test_single_process_mesh_may_use_fewer_devices():
    assert jax.process_count() == 1
    assert make_mesh(fsdp=4).devices.size == 4  # multi-process meshes must span all devices


def test_flags_reach_every_subcommand_including_convert_directions():
    from prorl_jax.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--coordinator", "h:1"],
                 ["eval", "--model", "m", "--data", "d", "--out", "o", "--coordinator", "h:1"],
                 ["generate", "--model", "m", "--prompt", "p", "--coordinator", "h:1"],
                 ["convert", "--coordinator", "h:1", "orbax-to-hf", "--ckpt", "c", "--out", "o"],
                 ["convert", "orbax-to-hf", "--ckpt", "c", "--out", "o", "--coordinator", "h:1"]):
        args, _ = parser.parse_known_args(argv)
        assert args.coordinator == "h:1", argv
        assert args.init_timeout == distributed.DEFAULT_INIT_TIMEOUT_S and not args.single_process


def test_convert_is_refused_under_several_processes_with_the_reason(monkeypatch, capsys):
    # No launch needed: a started two-process run is simulated; the refusal exits 2.
    monkeypatch.setattr(distributed, "start", lambda args: True)
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    ran = []
    with pytest.raises(SystemExit) as e:
        distributed.run_command(argparse.Namespace(), "convert", ran.append)
    assert e.value.code == 2 and not ran
    err = capsys.readouterr().err.strip()
    assert err.startswith("[process 1/2] prorl-jax convert: error: prorl-jax convert runs as one "
                          "process, not 2: it only reads and writes checkpoint files")
    assert "--single-process" in err and len(err.splitlines()) == 1
    assert {"eval", "generate"} <= distributed.MULTI_PROCESS_COMMANDS
