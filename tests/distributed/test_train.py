"""`prorl-jax train` as two real processes x 4 CPU devices on a data=2 x fsdp=4 mesh: the
same step-1 metrics as one process x 8 devices, metrics written once (by process 0), exact
resume after both processes are SIGKILLed, and the Hugging Face export of the final policy
byte-identical to a single-process export of the same params."""

import json

import numpy as np
import pytest

from prorl_jax.checkpoint import complete_steps
from prorl_jax.rl.metrics_log import read_metrics

pytestmark = pytest.mark.slow

# Three small steps of the demo config (4 prompts x 8 samples, 2 mini-batches, a reference
# reset after step 2, a checkpoint every step), no validation, over all 8 devices.
SHORT = ["steps=3", "rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.max_gen_batches=2",
         "validation.every_steps=0", "data.val_sources=[]", "reference_reset.every_steps=2",
         "checkpoint.every_steps=1", "logging.tensorboard=false", "logging.progress=false",
         "checkpoint.export_hf=false", "mesh.data=2", "mesh.fsdp=4", "rewards.num_workers=1"]
NONDETERMINISTIC = ("time/", "tokens_per_second")


def _train(run_processes, args, overrides=(), **kw):
    sets = [x for o in (*SHORT, *overrides) for x in ("--set", o)]
    return run_processes(["-m", "prorl_jax", "train", *args, *sets], timeout=900, **kw)


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(NONDETERMINISTIC)} for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_processes, explain):
    root = tmp_path_factory.mktemp("train2")
    out = {"root": root}
    out["one"] = _train(run_processes, ["--run-dir", str(root / "one")], processes=1, devices=8)
    assert [p.rc for p in out["one"]] == [0], explain(out["one"])
    out["two"] = _train(run_processes, ["--run-dir", str(root / "two")],
                        ["checkpoint.export_hf=true"])
    assert [p.rc for p in out["two"]] == [0, 0], explain(out["two"])
    # Both processes SIGKILL themselves right after step 2 is logged, before its checkpoint.
    out["killed"] = _train(run_processes, ["--run-dir", str(root / "killed")],
                           ["checkpoint.export_hf=true"],
                           env={"PRORL_JAX_FAULT_AFTER_STEP": "2:KILL"})
    out["killed_steps"] = [r["step"] for r in read_metrics(root / "killed")]
    out["killed_ckpts"] = complete_steps(root / "killed" / "checkpoints")
    out["resumed"] = run_processes(["-m", "prorl_jax", "train", "--resume", str(root / "killed")],
                                   timeout=900)
    assert [p.rc for p in out["resumed"]] == [0, 0], explain(out["resumed"])
    return out


def test_two_processes_log_the_one_process_step_once(runs):
    root = runs["root"]
    one, two = read_metrics(root / "one"), read_metrics(root / "two")
    assert [r["step"] for r in two] == [1, 2, 3]  # one line per step: process 0 alone writes
    a, b = one[0], two[0]
    # Rollouts and rewards are host-side and exact; the update differs only in the order
    # of float32 reductions over the devices of two processes.
    for k in ("reward/mean", "tokens/generated", "groups/kept", "filtered_fraction"):
        assert a[k] == b[k], k
    for k in ("loss", "kl", "grad_norm", "entropy"):
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-9), k
    assert a["grad_norm"] > 0 and a["kl"] >= 0
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert summary["steps"] == 3 and [r["step"] for r in summary["resets"]] == [2]
    # Console lines come from process 0 only; process 1 logs warnings only, prefixed.
    p0, p1 = runs["two"]
    assert "run directory:" in p0.stdout and "run directory:" not in p1.stdout
    assert all(ln.startswith("[process 1/2]") or not ln.strip() or "Gloo" in ln
               for ln in p1.stderr.splitlines() if " INFO " in ln or "WARNING" in ln)


def test_sigkill_both_then_resume_equals_uninterrupted(runs):
    root = runs["root"]
    assert [p.rc for p in runs["killed"]] == [-9, -9]
    assert runs["killed_steps"] == [1, 2] and runs["killed_ckpts"] == [1]
    resumed = read_metrics(root / "killed")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert _comparable(resumed) == _comparable(read_metrics(root / "two"))


def test_two_process_hf_export_is_the_one_process_export(runs, tmp_path):
    import jax
    import transformers

    from prorl_jax.checkpoint import restore
    from prorl_jax.model import hf, qwen
    from prorl_jax.model.config import ModelConfig

    two = runs["root"] / "two"
    cfg = ModelConfig.from_hf_config(json.loads((two / "hf" / "config.json").read_text()))
    shapes = qwen.param_shapes(cfg)
    # The final params as the two processes checkpointed them, read by this one process.
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one_device),
                          shapes)
    params, _, _ = restore(two / "checkpoints", 3, params_target=target, with_state=False)
    hf.save_hf(str(tmp_path / "hf"), cfg, jax.tree.map(np.asarray, params))
    for f in (tmp_path / "hf").iterdir():
        if f.suffix in (".safetensors", ".json") and f.name != "tokenizer.json":
            assert (two / "hf" / f.name).read_bytes() == f.read_bytes(), f.name
    model = transformers.AutoModelForCausalLM.from_pretrained(two / "hf")
    assert model.config.num_hidden_layers == cfg.num_hidden_layers
