"""`prorl-jax convert` both ways and the Orbax side (orbax_io)."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_run import assert_one_line_error, prorl
from safetensors import safe_open

from prorl_jax.cli import main
from prorl_jax.errors import CheckpointError
from prorl_jax.model import hf, orbax_io
from prorl_jax.sharding import make_mesh

SMALL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
             vocab_size=80)


def _tensors(path):
    with safe_open(os.path.join(path, "model.safetensors"), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def src(hf_checkpoint):
    return hf_checkpoint("qwen3", seed=7, head_dim=12, **SMALL)[0]


def test_cli_hf_to_orbax_to_hf_is_bit_identical(src, tmp_path, capsys):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    assert main(["convert", "hf-to-orbax", "--hf", src, "--out", ckpt, "--step", "3"]) == 0
    assert "step 3" in capsys.readouterr().out
    assert main(["convert", "orbax-to-hf", "--ckpt", ckpt, "--out", out]) == 0
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert hf.load_hf(out)[0] == hf.load_hf(src)[0]


def test_reads_params_of_a_trainer_style_checkpoint(src, tmp_path):
    """A checkpoint that also has the trainer's "state" item, read onto a mesh."""
    cfg, params = hf.load_hf(src)
    ckpt = str(tmp_path / "train")
    with ocp.CheckpointManager(ckpt, item_names=("params", "state", "meta")) as mgr:
        for step in (10, 20):
            mgr.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                state=ocp.args.StandardSave({"step": np.int32(step)}),
                meta=ocp.args.JsonSave({"model_config": cfg.to_hf_config(), "data": {"epoch": 1}})))
        mgr.wait_until_finished()
    assert orbax_io.latest_step(ckpt) == 20
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    cfg2, restored, meta = orbax_io.load_orbax(ckpt, step=10, mesh=mesh)
    assert cfg2 == cfg and meta["data"] == {"epoch": 1}
    q = restored["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)


def test_convert_errors(src, tmp_path, capsys):
    assert main(["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint directory" in capsys.readouterr().err
    assert main(["convert", "hf-to-orbax", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    ckpt = str(tmp_path / "ckpt")
    cfg, params = hf.load_hf(src)
    orbax_io.save_orbax(ckpt, cfg, params, step=1)
    with pytest.raises(CheckpointError, match=r"step 5 not found in .* \(complete steps: \[1\]\)"):
        orbax_io.load_orbax(ckpt, step=5)
    with pytest.raises(CheckpointError, match="already holds step 1"):
        orbax_io.save_orbax(ckpt, cfg, params, step=1)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        orbax_io.load_orbax(str(tmp_path / "empty"))


def test_convert_cli_module_does_not_import_jax():
    code = "import sys, prorl_jax.model.convert_cli; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------- newcomer cases (CLI)


def test_builtin_model_recorded_tokenizer_and_no_silent_overwrite(tmp_path):
    from prorl_jax.paths import resolve_model_dir
    from prorl_jax.tokenizer import load_tokenizer

    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    proc = prorl("convert", "hf-to-orbax", "--hf", "builtin:demo_base", "--out", str(ckpt),
                 "--step", "1")
    assert proc.returncode == 0, proc.stderr
    # No --tokenizer: the one recorded when the checkpoint was made is copied.
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(ckpt), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recorded in the checkpoint's meta" in proc.stdout
    base = resolve_model_dir("builtin:demo_base")
    assert load_tokenizer(out).encode("1+2") == load_tokenizer(base).encode("1+2")
    # An existing non-empty directory is refused (nothing touched), or replaced with --force.
    before = os.path.getmtime(out / "model.safetensors")
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(ckpt), "--out", str(out))
    assert_one_line_error(proc, f"--out {out} exists and is not empty", "--force")
    assert os.path.getmtime(out / "model.safetensors") == before
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(ckpt), "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    # --out where a file is.
    (tmp_path / "file").write_text("x")
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "file"))
    assert_one_line_error(proc, "file: not a directory")
    proc = prorl("convert", "hf-to-orbax", "--hf", "builtin:demo_base", "--out",
                 str(tmp_path / "file" / "ck"))
    assert_one_line_error(proc, "not a directory", "is a file")


def test_tokenizer_from_the_run_config_or_a_clear_warning(src, tmp_path):
    cfg, params = hf.load_hf(src)  # a checkpoint with no tokenizer of its own
    run = tmp_path / "run"
    orbax_io.save_orbax(str(run / "checkpoints"), cfg, params, step=3)
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(run / "checkpoints"), "--out",
                 str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: no tokenizer known" in proc.stderr and "--tokenizer DIR" in proc.stderr
    assert not (tmp_path / "a" / "tokenizer.json").exists()
    # A training run records its model in RUN/config.yaml: that tokenizer is used.
    (run / "config.yaml").write_text("model:\n  path: builtin:demo_base\n")
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(run / "checkpoints"), "--out",
                 str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert f"recorded in {run / 'config.yaml'}" in proc.stdout
    assert (tmp_path / "b" / "tokenizer.json").is_file()
    # The run directory itself is accepted for its checkpoints.
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(run), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "(step 3)" in proc.stdout and (tmp_path / "c" / "tokenizer.json").is_file()


@pytest.fixture()
def two_steps(src, tmp_path):
    cfg, params = hf.load_hf(src)
    ckpt = tmp_path / "ckpt"
    orbax_io.save_orbax(str(ckpt), cfg, params, step=1)
    orbax_io.save_orbax(str(ckpt), cfg, params, step=2)
    return ckpt


def _largest_array_file(item_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(item_dir) for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep or d.endswith(os.sep + "d")]
    return max(files, key=os.path.getsize)


def test_truncated_array_names_the_step_and_the_fallback(two_steps, tmp_path):
    victim = _largest_array_file(two_steps / "2" / "params")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 3)
    out = tmp_path / "hf"
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(two_steps), "--out", str(out))
    # One line (no Orbax/asyncio tracebacks), the step, the fallback and how to use it.
    assert_one_line_error(proc, "checkpoint step 2", "cannot be read", "previous complete step is 1",
                          f"--ckpt {two_steps} --step 1")
    assert "Exception ignored" not in proc.stderr and "never retrieved" not in proc.stderr
    assert not out.exists()
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(two_steps), "--step", "1", "--out",
                 str(out))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("item", ["params", "meta"])
def test_missing_item_names_the_step_and_the_fallback(two_steps, tmp_path, item):
    import shutil

    shutil.rmtree(two_steps / "2" / item)
    proc = prorl("convert", "orbax-to-hf", "--ckpt", str(two_steps), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, f"checkpoint step 2 in {two_steps} has no '{item}' item",
                          "--step 1")


def test_a_mismatched_target_is_not_called_damaged(src, tmp_path):
    from prorl_jax import checkpoint
    from prorl_jax.errors import DamagedCheckpointError

    cfg, params = hf.load_hf(src)
    ckpt = str(tmp_path / "ckpt")
    orbax_io.save_orbax(ckpt, cfg, params, step=1)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(s + 1 for s in x.shape), x.dtype,
                                                        sharding=dev), params)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(ckpt, params_target=wrong, with_state=False)
    assert not isinstance(info.value, DamagedCheckpointError)
    assert "not compatible with the stored shape" in str(info.value)
    assert "\n" not in str(info.value)  # one line, not Orbax's multi-line report


def test_orphaned_read_reports_are_muted_and_others_are_not(caplog):
    """A failed restore leaves other Orbax reads failing unretrieved; asyncio reports each as
    "Task exception was never retrieved" when the task is collected (seen in CI, through
    `prorl-jax convert` on a truncated checkpoint). Those are muted, any other such report
    still shows."""
    import asyncio
    import gc
    import logging

    from prorl_jax import checkpoint

    checkpoint._mute_orphaned_reads()

    def orphan(source: str) -> None:
        code = compile("async def read():\n    raise ValueError('OUT_OF_RANGE')\n", source, "exec")
        namespace = {}
        exec(code, namespace)
        loop = asyncio.new_event_loop()
        task = loop.create_task(namespace["read"]())
        loop.run_until_complete(asyncio.sleep(0))  # the task runs and fails; nobody awaits it
        loop.close()
        del task
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        orphan("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
        gathering = asyncio.new_event_loop()
        failed = gathering.create_task(asyncio.sleep(0, result=None))
        gathering.run_until_complete(failed)
        future = gathering.create_future()
        future.set_exception(Exception("reading array (orbax)"))  # "Future exception was ..."
        # Neither word in the message, only in the traceback's frames, or as "TensorStore".
        raiser = compile("def read():\n    raise ValueError('error while reading array')\n",
                         "/site-packages/orbax/checkpoint/_src/serialization/tensorstore_utils.py",
                         "exec")
        namespace = {}
        exec(raiser, namespace)
        framed = gathering.create_future()
        try:
            namespace["read"]()
        except ValueError as e:
            framed.set_exception(e)
        spelled = gathering.create_future()
        spelled.set_exception(ValueError("See full TensorStore details: {'driver': 'zarr'}"))
        gathering.close()
        del future, framed, spelled
        gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        orphan("/home/user/my_code.py")
        shown = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert len(shown) == 1 and "my_code.py" in shown[0].getMessage()


def test_closed_loop_callbacks_are_muted_and_other_errors_are_not(capsys):
    """TensorStore reads that finish after Orbax closed its loop print "RuntimeError: Event
    loop is closed" through sys.excepthook; nothing else that reaches the hook is muted."""
    import asyncio

    from prorl_jax import checkpoint

    checkpoint._mute_orphaned_reads()
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        # Called from TensorStore's C++ thread, the traceback starts in asyncio itself.
        closed = e.with_traceback(e.__traceback__.tb_next)
    sys.excepthook(type(closed), closed, closed.__traceback__)
    assert capsys.readouterr().err == ""
    try:
        raise RuntimeError("Event loop is closed")  # same text, raised by user code
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    assert "Event loop is closed" in capsys.readouterr().err
