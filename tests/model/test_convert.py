"""`prorl-jax convert` both ways and the Orbax side (orbax_io)."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
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
