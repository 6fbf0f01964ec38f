"""What a non-editable install needs (issue 11): the shipped configs are package data, the
dependencies a torch-free environment lacks are declared, local venvs are ignored. The real
proof is .ci/run, which installs a wheel into an empty venv and runs the demo outside the
checkout; these checks catch the same mistakes in seconds."""

import pathlib
import shutil
import subprocess
import tomllib

import pytest

from prorl_jax import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_shipped_configs_are_package_data():
    pkg = ROOT / "prorl_jax"
    assert config.CONFIG_DIR == pkg / "configs"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["prorl_jax"]
    shipped = {p for pattern in patterns for p in pkg.glob(pattern) if p.is_file()}
    configs = set(config.CONFIG_DIR.glob("*.yaml"))
    assert {"demo.yaml", "prorl_1.5b.yaml", "prorl_v2_1.5b.yaml"} <= {p.name for p in configs}
    assert configs <= shipped
    assert (pkg / "assets" / "demo_base" / "model.safetensors") in shipped
    # A name resolves inside the package from any working directory.
    assert config.resolve_config_path("demo") == config.CONFIG_DIR / "demo.yaml"


def test_top_level_configs_is_the_package_directory():
    assert (ROOT / "configs").resolve() == config.CONFIG_DIR.resolve()
    assert (ROOT / "configs" / "demo.yaml").read_text() == (config.CONFIG_DIR / "demo.yaml").read_text()


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(config.ConfigError, match=r"config file not found: nope \(shipped configs: "
                                                 r"demo, prorl_1.5b, prorl_v2_1.5b\)"):
        config.resolve_config_path("nope")


def test_jinja2_is_a_declared_dependency():
    # transformers renders chat templates with jinja2 but does not require it; only torch
    # pulled it in, so a torch-free install failed at the first prompt.
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for d in PYPROJECT["project"]["dependencies"]}
    assert "jinja2" in names


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="not a git checkout")
def test_local_venvs_are_ignored():
    for path in (".venv/bin/python", "venv/bin/python"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert proc.returncode == 0, path
