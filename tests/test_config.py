"""Config loading: every shipped file loads; user errors are one clear line with exit code 2."""

import pathlib

import pytest

from prorl_jax import cli
from prorl_jax.config import (
    CONFIG_DIR,
    RLConfig,
    TrainConfig,
    apply_overrides,
    build,
    load_config,
    resolve_config_path,
)
from prorl_jax.errors import ConfigError

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_directory_is_not_empty():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "prorl_1.5b", "prorl_v2_1.5b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.rl.prompts_per_step % cfg.rl.mini_batch_prompts == 0


def test_recipe_values_in_prorl_config():
    cfg = load_config(resolve_config_path("prorl_1.5b"))
    # docs/recipe.md: clip-higher 0.2/0.4, k3 KL 1e-4, lr 2e-6, 256 x 16, mini-batch 64.
    assert (cfg.rl.clip_low, cfg.rl.clip_high, cfg.rl.clip_c) == (0.2, 0.4, 3.0)
    assert (cfg.rl.kl_kind, cfg.rl.kl_coef, cfg.rl.entropy_coef) == ("low_var_kl", 1e-4, 0.0)
    assert cfg.optim.lr == 2e-6 and cfg.sampling.temperature == 1.2 and cfg.sampling.top_p == 1.0
    assert (cfg.rl.prompts_per_step, cfg.sampling.n, cfg.rl.mini_batch_prompts) == (256, 16, 64)
    assert cfg.sampling.max_new_tokens == 8192 and cfg.reference_reset.reset_optimizer
    v2 = load_config(resolve_config_path("prorl_v2_1.5b"))
    assert v2.rl.advantage == "reinforce_pp_baseline" and v2.rl.kl_kind == "k2"
    assert not v2.reference_reset.reset_optimizer and v2.reference_reset.every_steps > 0


def test_set_overrides_convert_types():
    cfg = load_config(None, ["rl.kl_coef=1e-3", "sampling.n=4", "rl.clip_c=null",
                             "rl.dynamic_sampling=false", "optim.lr=3", "rl.mini_batch_prompts=8",
                             "rl.prompts_per_step=16"])
    assert cfg.rl.kl_coef == 1e-3 and isinstance(cfg.rl.kl_coef, float)
    assert cfg.sampling.n == 4 and cfg.rl.clip_c is None and cfg.rl.dynamic_sampling is False
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)


def test_nested_lists_of_dataclasses():
    data = apply_overrides({"data": {"sources": [{"kind": "reasoning_gym",
                                                  "tasks": ["chain_sum"]}]}}, [])
    cfg = build(TrainConfig, data)
    assert cfg.data.sources[0].tasks == ("chain_sum",)


@pytest.mark.parametrize("text,expected", [
    ("rl:\n  clip_lowx: 0.1\n", "unknown key 'rl.clip_lowx'"),
    ("sampling:\n  n: four\n", "sampling.n: expected an integer, got 'four'"),
    ("rl:\n  dynamic_sampling: 3\n", "rl.dynamic_sampling: expected true or false"),
    ("model:\n  config:\n    num_attention_heads: 12\n    num_key_value_heads: 5\n",
     "model.num_attention_heads (12) must be divisible by model.num_key_value_heads (5)"),
    ("rl:\n  clip_c: 0.5\n", "rl.clip_c must be > 1"),
    ("rl:\n  prompts_per_step: 10\n  mini_batch_prompts: 4\n", "must be divisible by"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("rl: [unclosed\n", "is not valid YAML"),
])
def test_bad_config_is_one_line_with_key_and_file(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert expected in str(e.value) and str(path) in str(e.value)
    # Through the CLI: exit code 2, one line on stderr, no traceback.
    code = cli.main(["train", "--config", str(path), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_bad_override_names_key():
    with pytest.raises(ConfigError, match="unknown key 'rl.nope'"):
        load_config(None, ["rl.nope=1"])


def test_bad_override_names_the_override_not_the_file():
    demo = resolve_config_path("demo")
    for override, expected in [
        ("rl.foo=1", "--set rl.foo=1: unknown key 'rl.foo' (valid: "),
        ("rl.clip_low.x=1", "--set rl.clip_low.x=1: 'rl.clip_low' is not a section"),
        ("rl.kl_kind=k9", "--set rl.kl_kind=k9: rl.kl_kind must be one of"),
        ("sampling.n=four", "--set sampling.n=four: sampling.n: expected an integer"),
        ("nope=1", "--set nope=1: unknown key 'nope'"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(demo, ["steps=3", override])
        assert str(e.value).startswith(expected), str(e.value)
        assert str(demo) not in str(e.value)
    # Free-form mappings (here domain -> suffix) take any key.
    assert load_config(demo, ["data.suffixes.math=Box it."]).data.suffixes["math"] == "Box it."
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["rl.kl_coef"])


def test_missing_config_file(capsys):
    assert cli.main(["train", "--config", "/nonexistent/x.yaml", "--dry-run"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_defaults_are_the_prorl_v1_recipe():
    rl = RLConfig()
    assert (rl.clip_low, rl.clip_high, rl.clip_c, rl.kl_coef, rl.kl_kind, rl.loss_agg) == (
        0.2, 0.4, 3.0, 1e-4, "low_var_kl", "token-mean")


def test_every_config_key_is_documented():
    """docs/configuration.md names every field of every section."""
    import dataclasses

    from prorl_jax import config as c

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    sections = [c.TrainConfig, c.ModelSection, c.MeshConfig, c.SamplingConfig, c.RLConfig,
                c.OptimConfig, c.ReferenceResetConfig, c.DataConfig, c.SourceConfig,
                c.RewardConfig, c.ValidationConfig, c.BoundaryConfig, c.CheckpointConfig,
                c.LoggingConfig]
    missing = [f"{cls.__name__}.{f.name}" for cls in sections for f in dataclasses.fields(cls)
               if f"`{f.name}`" not in doc]
    assert not missing


def test_set_mapping_merges_and_lists_replace():
    base = {"rl": {"prompts_per_step": 16, "kl_coef": 1e-3},
            "data": {"val_sources": [{"kind": "jsonl", "path": "v.jsonl"}], "seed": 3}}
    out = apply_overrides(base, ["rl={kl_coef: 0.1}", "data={val_sources: []}"])
    assert out["rl"] == {"prompts_per_step": 16, "kl_coef": 0.1}
    assert out["data"] == {"val_sources": [], "seed": 3}
    assert base["rl"]["kl_coef"] == 1e-3  # the loaded file's dict is not modified


def test_config_accepts_exactly_the_loss_library_kl_and_aggregation_names():
    import jax.numpy as jnp

    from prorl_jax.rl import losses

    logp, ref, mask = jnp.zeros((1, 2)), jnp.full((1, 2), -0.5), jnp.ones((1, 2))
    for kind in losses.KL_KINDS:  # every estimator the loss knows is configurable ...
        assert RLConfig(kl_kind=kind).kl_kind == kind
        losses.kl_penalty(logp, ref, kind)
    for mode in losses.AGG_MODES:
        assert RLConfig(loss_agg=mode).loss_agg == mode
        losses.aggregate(logp, mask, mode)
    assert {"abs+", "k2+", "low_var_kl+"} <= set(losses.KL_KINDS)  # the names that drifted
    for bad in ("k4", "low_var_kl++", ""):  # ... and a name the loss rejects, the config rejects
        with pytest.raises(ConfigError):
            losses.kl_penalty(logp, ref, bad)
        with pytest.raises(ConfigError, match="rl.kl_kind"):
            RLConfig(kl_kind=bad)
    with pytest.raises(ConfigError, match="rl.loss_agg"):
        RLConfig(loss_agg="seq-sum")
    assert losses.SEQ_MEAN_MODES == tuple(m for m in losses.AGG_MODES if m != "token-mean")
