"""The reasoning-boundary report (rl/boundary.py): samples on disk, overlap, report files."""

import json

import pytest

from prorl_jax.config import SourceConfig, TrainConfig, build, to_dict
from prorl_jax.data import load_reasoning_gym
from prorl_jax.errors import ConfigError
from prorl_jax.eval.runner import record_dict
from prorl_jax.eval.store import PromptResult, record_fingerprint
from prorl_jax.rl import boundary


def _cfg(**boundary_kw) -> TrainConfig:
    val = SourceConfig(kind="reasoning_gym", tasks=("spell_backward",), size=4, seed=2)
    cfg = TrainConfig()
    return cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                            "data": build(type(cfg.data), {"val_sources": [to_dict(val)]}),
                            "boundary": build(type(cfg.boundary),
                                              {"num_prompts": 4, "n": 4, **boundary_kw})})


def _records():
    return load_reasoning_gym(SourceConfig(kind="reasoning_gym", tasks=("spell_backward",),
                                           size=4, seed=2))


def _results(records, rewards, label_texts=None):
    out = []
    for r, rw in zip(records, rewards):
        texts = label_texts or [f"<answer>{r.ground_truth['entry']['answer']}</answer>"
                                if x >= 1 else "no answer" for x in rw]
        out.append(PromptResult(id=str(r.id), task="spell_backward", domain="reasoning_gym",
                                rewards=tuple(rw), completions=tuple(texts),
                                prompt_hash=record_fingerprint(record_dict(r))))
    return out


def test_ks_for():
    assert boundary.ks_for(64) == [1, 2, 4, 8, 16, 32, 64]
    assert boundary.ks_for(12) == [1, 2, 4, 8, 12]
    assert boundary.ks_for(1) == [1]


def test_save_then_stored_round_trips_and_refuses_changes(tmp_path):
    cfg, records = _cfg(), _records()
    res = _results(records, [[1, 0, 0, 0]] * 4)
    assert boundary.stored(tmp_path, "base", cfg, records) is None
    boundary.save(tmp_path, "base", cfg, res)
    assert boundary.stored(tmp_path, "base", cfg, records) == res
    with pytest.raises(ConfigError, match="boundary.n: .* n=4, not 8"):
        boundary.stored(tmp_path, "base", _cfg(n=8), records)
    other = load_reasoning_gym(SourceConfig(kind="reasoning_gym", tasks=("spell_backward",),
                                            size=4, seed=99))
    with pytest.raises(ConfigError, match="other held-out prompts"):
        boundary.stored(tmp_path, "base", cfg, other)


def test_warmup_prompts_regenerates_sources_minus_removed(tmp_path):
    src = SourceConfig(kind="reasoning_gym", tasks=("spell_backward",), size=20, seed=2)
    minus = SourceConfig(kind="reasoning_gym", tasks=("spell_backward",), size=5, seed=2)
    assert boundary.warmup_prompts(tmp_path) is None  # the base does not describe it
    (tmp_path / "warmup_data.json").write_text(json.dumps(
        {"sources": [to_dict(src)], "minus": [to_dict(minus)]}))
    got = boundary.warmup_prompts(tmp_path)
    every = {r.prompt for r in load_reasoning_gym(src)}
    removed = {r.prompt for r in load_reasoning_gym(minus)}
    assert got == every - removed and removed and removed <= every
    held_out = load_reasoning_gym(minus)
    o = boundary.overlap(held_out, train_prompts={held_out[0].prompt}, warmup=got)
    assert o == {"held_out_prompts": len(removed), "rl_training": 1, "warmup": 0}
    assert boundary.overlap(held_out, set(), every)["warmup"] == len(removed)


def test_malformed_warmup_data_is_one_clear_error(tmp_path):
    (tmp_path / "warmup_data.json").write_text(json.dumps({"sources": [{"kind": "nope"}]}))
    with pytest.raises(ConfigError, match="warmup_data.json"):
        boundary.warmup_prompts(tmp_path)
    (tmp_path / "warmup_data.json").write_text("{not json")
    with pytest.raises(ConfigError, match="warmup_data.json"):
        boundary.warmup_prompts(tmp_path)


def test_write_report_files_and_summary(tmp_path):
    cfg, records = _cfg(), _records()
    # prompt 0: expanded (0 -> 1 of 4), 1: unsolved, 2: unchanged (pass@4 is 1 for both;
    # per prompt, pass@n is 0 or 1, so "improved" needs k < n), 3: shrunk.
    base = _results(records, [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    final = _results(records, [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    s = boundary.write(tmp_path, base, final, cfg,
                       {"held_out_prompts": 4, "rl_training": 0, "warmup": 0})
    assert s["base_unsolved"] == 2 and s["now_solved"] == 1
    assert s["verdicts"] == {"expanded": 1, "improved": 0, "unchanged": 1, "unsolved": 1,
                             "diminish": 0, "shrunk": 1}
    assert s["pass@1"] == [pytest.approx(5 / 16), pytest.approx(5 / 16)]
    assert s["pass@4"] == [pytest.approx(0.5), pytest.approx(0.5)]
    # Wrong answers here have no <answer> tag: accuracy among well-formed is 1 for both.
    assert s["well_formed"] == [pytest.approx(5 / 16)] * 2
    assert s["accuracy_well_formed"] == [1.0, 1.0]
    out = tmp_path / "boundary"
    results = json.loads((out / "results.json").read_text())
    assert [r["verdict"] for r in results["prompts"]] == ["expanded", "unsolved", "unchanged",
                                                          "shrunk"]
    md = (out / "report.md").read_text()
    assert "1 of 2 prompts the base never solved in 4 tries are now solved" in md
    assert "plots/prompt_scatter.png" in md and "plots/all_prompts.png" in md
    for png in ("all_prompts.png", "prompt_scatter.png", "spell_backward.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    lines = boundary.summary_lines(s)
    assert len(lines) == 3
    assert lines[0].startswith("held-out pass@1  0.312 -> 0.312")
    assert "1 of 2 prompts the base never solved in 4 tries are now solved" in lines[2]
    assert str(out / "report.md") in lines[2]


def test_bad_boundary_settings_name_the_key():
    with pytest.raises(ConfigError, match="boundary.num_prompts must be >= 0"):
        build(TrainConfig, {"boundary": {"num_prompts": -1}})
    with pytest.raises(ConfigError, match="boundary"):
        build(TrainConfig, {"boundary": {"n": 0}})
