"""Aggregation, boundary verdicts, report files, plots and the resumable JSONL store."""

import json
import math

import matplotlib.image as mpimg
import pytest

from prorl_jax.eval.passk import EvalError
from prorl_jax.eval.plots import plot_file_name, plot_pass_at_k, plot_report
from prorl_jax.eval.report import (
    boundary_report,
    build_report,
    classify_boundary,
    render_markdown,
    summarize,
    validation_metrics,
    write_report,
)
from prorl_jax.eval.store import PromptResult, append_results, read_results, record_task


def R(pid, task, domain, rewards):
    return PromptResult(id=pid, task=task, domain=domain, rewards=tuple(rewards),
                        completions=tuple(f"c{i}" for i in range(len(rewards))),
                        lengths=tuple(3 for _ in rewards), finished=tuple(True for _ in rewards))


def test_record_task_lookup_order():
    assert record_task({"domain": "math", "meta": {"task": "aime"}}) == "aime"
    rg = {"domain": "reasoning_gym", "ground_truth": {"task": "boxnet", "entry": {}}, "meta": {}}
    assert record_task(rg) == "boxnet"
    assert record_task({"domain": "math", "meta": {"data_source": "deepscaler"}}) == "deepscaler"
    assert record_task({"domain": "code", "meta": {}}) == "code"
    assert record_task({"domain": "stem"}) == "stem"


def test_summarize_per_task_and_domain():
    results = [R("a", "t1", "math", [1, 0, 0, 0]), R("b", "t1", "math", [0, 0, 0, 0]),
               R("c", "t2", "reasoning_gym", [0.5, 1, 1, 1])]
    s = summarize(results, [1, 4])
    assert s["tasks"]["t1"]["pass@1"] == pytest.approx(0.125)
    assert s["tasks"]["t1"]["pass@4"] == pytest.approx(0.5)
    assert s["tasks"]["t1"]["domain"] == "math"
    assert s["tasks"]["t2"]["pass@1"] == pytest.approx(0.75)
    assert s["tasks"]["t2"]["mean_reward"] == pytest.approx(0.875)
    assert s["domains"]["math"]["num_prompts"] == 2
    assert s["overall"]["pass@1"] == pytest.approx((0.25 + 0 + 0.75) / 3)
    assert s["overall"]["samples_per_prompt"] == 4
    with pytest.raises(EvalError, match="fewer than k=8"):
        summarize(results, [1, 8])
    m = validation_metrics(results)
    assert m["val/pass@1/math"] == pytest.approx(0.125)
    assert m["val/reward/reasoning_gym"] == pytest.approx(0.875)
    assert m["val/pass@1"] == pytest.approx(1 / 3)
    assert m["val/reward/mean"] == pytest.approx((0.25 + 0 + 0.875) / 3)
    assert validation_metrics([]) == {}


@pytest.mark.parametrize("base_p1,base_pk,p1,pk,verdict", [
    (0.0, 0.0, 0.1, 0.5, "expanded"),
    (0.0, 0.0, 0.0, 0.0, "unsolved"),
    (0.2, 0.6, 0.4, 0.5, "diminish"),
    (0.2, 0.6, 0.1, 0.5, "shrunk"),
    (0.2, 0.6, 0.2, 0.5, "shrunk"),
    (0.2, 0.6, 0.3, 0.9, "improved"),
    (0.2, 0.6, 0.3, 0.6, "unchanged"),
    (0.2, 0.6, 0.3, 0.6 + 1e-12, "unchanged"),
])
def test_classify_boundary(base_p1, base_pk, p1, pk, verdict):
    assert classify_boundary(base_p1, base_pk, p1, pk) == verdict


def test_boundary_report_uses_first_model_as_base():
    base = [R("a", "boxnet", "reasoning_gym", [0, 0, 0, 0]), R("b", "easy", "math", [1, 0, 1, 1]),
            R("c", "hard", "math", [1, 0, 0, 0])]
    rl = [R("a", "boxnet", "reasoning_gym", [0, 1, 0, 0]), R("b", "easy", "math", [1, 1, 1, 1]),
          R("c", "hard", "math", [0, 0, 0, 0])]
    rows = boundary_report({"base": summarize(base, [1, 2, 4]), "rl": summarize(rl, [1, 2, 4])})
    verdicts = {r["task"]: r["verdict"] for r in rows}
    assert verdicts == {"boxnet": "expanded", "easy": "unchanged", "hard": "shrunk"}
    assert all(r["model"] == "rl" and r["k_max"] == 4 for r in rows)


def test_report_files_and_markdown(tmp_path):
    res = {"base": [R("a", "t1", "math", [0, 0]), R("b", "t2", "math", [1, 0])],
           "final": [R("a", "t1", "math", [1, 0]), R("b", "t2", "math", [1, 1])]}
    report = build_report(res, [1, 2], settings={"temperature": 0.6},
                          model_paths={"base": "/x/base", "final": "/x/final"})
    plots = plot_report(report, tmp_path / "plots", rel_to=tmp_path)
    assert set(plots) == {"all", "t1", "t2"}
    json_path, md_path = write_report(tmp_path, report, plots)
    loaded = json.loads(open(json_path).read())
    assert loaded["models"]["final"]["tasks"]["t2"]["pass@2"] == 1.0
    assert loaded["boundary"][0]["verdict"] == "expanded"
    md = open(md_path).read()
    assert "| t1 | final | 1 | 50.0 | 50.0 | 100.0 |" in md
    assert "**expanded**" in md and "![t2](plots/t2.png)" in md
    assert md == render_markdown(report, plots)
    for rel in plots.values():
        img = mpimg.imread(tmp_path / rel)
        assert img.shape[:2] == (400, 600)


def test_plot_draws_one_line_per_model(tmp_path):
    curves = {"base": {1: 0.1, 2: 0.2, 4: 0.3}, "rl": {1: 0.5, 2: 0.6, 4: 0.9}}
    path = plot_pass_at_k(curves, "boxnet", tmp_path / "sub" / "p.png")
    img = mpimg.imread(path)
    assert img.shape[:2] == (400, 600)
    # The two models get different default colours: C0 (blue) and C1 (orange) both appear.
    rgb = (img[..., :3] * 255).round()
    blue = ((abs(rgb[..., 0] - 31) < 6) & (abs(rgb[..., 1] - 119) < 6)
            & (abs(rgb[..., 2] - 180) < 6)).sum()
    orange = ((abs(rgb[..., 0] - 255) < 6) & (abs(rgb[..., 1] - 127) < 6)
              & (abs(rgb[..., 2] - 14) < 6)).sum()
    assert blue > 50 and orange > 50
    assert plot_file_name("a b/c") == "a_b_c.png"
    assert plot_file_name("///") == "task.png"


def test_store_round_trip_resume_and_torn_tail(tmp_path):
    path = tmp_path / "s" / "m.jsonl"
    assert read_results(path) == {}
    a, b, c = R("a", "t", "math", [1, 0]), R("b", "t", "math", [0.5, 0]), R("c", "t", "math", [0, 0])
    append_results(path, [a, b])
    assert read_results(path) == {"a": a, "b": b}
    with open(path, "a") as f:          # a writer killed mid-line
        f.write('{"id": "c", "task": "t", "dom')
    assert list(read_results(path)) == ["a", "b"]
    append_results(path, [c])
    assert read_results(path) == {"a": a, "b": b, "c": c}
    lines = open(path).read().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)


def test_store_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a"}\n' + json.dumps(R("b", "t", "math", [1]).to_json()) + "\n")
    with pytest.raises(EvalError, match=r"m.jsonl:1: not a per-prompt result"):
        read_results(path)


def test_prompt_verdicts_match_by_id_and_count_every_verdict():
    from prorl_jax.eval.report import prompt_verdicts, verdict_counts

    def res(pid, rewards):
        return PromptResult(id=pid, task="t", domain="math", rewards=tuple(rewards))

    base = [res("a", [0, 0, 0, 0]), res("b", [1, 0, 0, 0]), res("c", [1, 1, 1, 1]),
            res("gone", [0, 0, 0, 0])]
    final = [res("c", [1, 0, 0, 0]), res("a", [0, 1, 0, 0]), res("b", [1, 1, 0, 0]),
             res("new", [1, 1, 1, 1])]
    rows = prompt_verdicts(base, final, 2)
    assert [(r["id"], r["verdict"]) for r in rows] == [("c", "shrunk"), ("a", "expanded"),
                                                       ("b", "improved")]
    assert rows[1]["base_pass@k"] == 0 and rows[1]["pass@k"] == 0.5
    assert rows[1]["pass@1"] == pytest.approx(0.25) and rows[2]["pass@k"] == pytest.approx(5 / 6)
    assert verdict_counts(rows) == {"expanded": 1, "improved": 1, "unchanged": 0,
                                    "unsolved": 0, "diminish": 0, "shrunk": 1}
    with pytest.raises(EvalError, match="fewer than k=8"):
        prompt_verdicts(base, final, 8)


def test_answer_stats_separates_format_from_accuracy():
    from prorl_jax.eval.report import answer_stats

    r = PromptResult(id="a", task="t", domain="math", rewards=(1.0, 0.0, 0.0, 0.0),
                     completions=("\\boxed{2}", "\\boxed{3}", "2", "no idea"))
    s = answer_stats([r])
    assert s == {"samples": 4, "well_formed": 0.5, "accuracy_well_formed": 0.5}
    none = answer_stats([PromptResult(id="b", task="t", domain="math", rewards=(0.0,),
                                      completions=("x",))])
    assert none["well_formed"] == 0 and math.isnan(none["accuracy_well_formed"])
    with pytest.raises(EvalError, match="needs the completions"):
        answer_stats([PromptResult(id="c", task="t", domain="math", rewards=(1.0,))])
