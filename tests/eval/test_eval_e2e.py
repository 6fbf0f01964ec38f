"""`prorl-jax eval` end to end on a tiny checkpoint: JSONL, JSON, Markdown, PNG; resuming;
evaluate_records against the sampler; validate_records for the trainer.

Uses the shipped demo base (prorl_jax/assets/demo_base) as the base model when it exists,
and a tiny random Qwen2 checkpoint with a char-level tokenizer built here otherwise.
"""

import json
import pathlib
import string

import matplotlib.image as mpimg
import numpy as np
import pytest

from prorl_jax.cli import main
from prorl_jax.eval.passk import EvalError, pass_at_k
from prorl_jax.eval.store import read_results

DEMO_BASE = pathlib.Path(__file__).resolve().parents[2] / "prorl_jax" / "assets" / "demo_base"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<|eos|>", "<|user|>", "<|assistant|>", "<answer>", "</answer>"]
DATA = "reasoning_gym:chain_sum,basic_arithmetic"


def build_checkpoint(path: pathlib.Path, seed: int) -> str:
    """A 1-layer random Qwen2 (transformers, saved in HF format) with a char-level tokenizer."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|eos|>",
                                   additional_special_tokens=SPECIALS[2:], chat_template=TEMPLATE)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         eos_token_id=1, max_position_embeddings=1024, initializer_range=0.3)
    Qwen2ForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    other = build_checkpoint(tmp_path_factory.mktemp("rl_model"), seed=1)
    if DEMO_BASE.is_dir():
        return "builtin:demo_base", other
    return build_checkpoint(tmp_path_factory.mktemp("base_model"), seed=0), other


def _eval(models, out, *extra):
    return main(["eval", "--model", models[0], "--model", models[1], "--label", "base",
                 "--label", "rl", "--n", "4", "--k", "1,2,4", "--temperature", "1.0",
                 "--top-p", "1.0", "--max-new-tokens", "12", "--batch-prompts", "2",
                 "--no-progress", "--out", str(out), *extra])


def test_eval_end_to_end_and_resume(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(models, out, "--data", f"{DATA}:2", "--reward-workers", "1") == 0
    first = capsys.readouterr().out
    assert "base: sampling 4 of 4 prompts" in first and "Reasoning boundary" in first

    # Per-prompt JSONL: n completions and rewards per prompt; rewards are the verifier's.
    from prorl_jax import rewards
    from prorl_jax.data import load_source
    from prorl_jax.eval.data_spec import parse_data_spec

    recs = {r.id: r for r in load_source(parse_data_spec(f"{DATA}:2", seed=1234))}
    samples = read_results(out / "samples" / "rl.jsonl")
    assert set(samples) == set(recs)
    for pid, res in samples.items():
        assert len(res.rewards) == len(res.completions) == len(res.lengths) == 4
        assert res.task == recs[pid].ground_truth["task"]
        want = [rewards.get("reasoning_gym")(c, recs[pid].ground_truth) for c in res.completions]
        assert list(res.rewards) == pytest.approx(want)
        assert all(1 <= n <= 12 for n in res.lengths)

    # JSON: per-task pass@k recomputed from the JSONL.
    report = json.loads((out / "results.json").read_text())
    assert report["ks"] == [1, 2, 4] and list(report["models"]) == ["base", "rl"]
    for label in ("base", "rl"):
        res = read_results(out / "samples" / f"{label}.jsonl")
        for task in ("chain_sum", "basic_arithmetic"):
            rows = [r for r in res.values() if r.task == task]
            n = np.array([len(r.rewards) for r in rows])
            c = np.array([sum(x >= 1.0 for x in r.rewards) for r in rows])
            group = report["models"][label]["tasks"][task]
            assert group["num_prompts"] == 2 and group["domain"] == "reasoning_gym"
            for k in (1, 2, 4):
                assert group[f"pass@{k}"] == pytest.approx(pass_at_k(n, c, k).mean())
            assert group["mean_reward"] == pytest.approx(np.mean([np.mean(r.rewards)
                                                                  for r in rows]))
    assert {r["task"] for r in report["boundary"]} == {"chain_sum", "basic_arithmetic"}

    md = (out / "report.md").read_text()
    assert "## Reasoning boundary" in md and "| chain_sum | rl |" in md
    for name in ("all_prompts", "chain_sum", "basic_arithmetic"):
        assert f"(plots/{name}.png)" in md
        img = mpimg.imread(out / "plots" / f"{name}.png")
        assert img.shape[:2] == (400, 600)

    # Rerun with more prompts: only the new ones are sampled; finished lines stay untouched.
    before = {lb: (out / "samples" / f"{lb}.jsonl").read_text() for lb in ("base", "rl")}
    assert _eval(models, out, "--data", f"{DATA}:3", "--reward-workers", "0") == 0
    second = capsys.readouterr().out
    assert "base: sampling 2 of 6 prompts (4 already in" in second
    for lb in ("base", "rl"):
        text = (out / "samples" / f"{lb}.jsonl").read_text()
        assert text.startswith(before[lb]) and len(text.splitlines()) == 6

    # Rerun with everything done: no sampling at all.
    assert _eval(models, out, "--data", f"{DATA}:3", "--reward-workers", "0") == 0
    third = capsys.readouterr().out
    assert "all 6 prompts already sampled" in third and "sampling" not in third.replace(
        "already sampled", "")

    # Other sampling settings into the same --out are refused, and so are changed prompts.
    code = _eval(models, out, "--data", f"{DATA}:3", "--seed", "7")
    assert code == 2
    assert "seed=0" in capsys.readouterr().err
    code = _eval(models, out, "--data", f"{DATA}:3", "--suffix", "reasoning_gym=Answer.")
    assert code == 2
    assert "suffixes={}" in capsys.readouterr().err
    code = _eval(models, out, "--data", f"{DATA}:3", "--task-config",
                 '{"basic_arithmetic": {"min_terms": 4, "max_terms": 4}}')
    assert code == 2
    assert "different prompt with id" in capsys.readouterr().err


def test_evaluate_records_matches_the_sampler(models):
    from transformers import AutoTokenizer

    import prorl_jax as pj
    from prorl_jax.data import ChatFormatter
    from prorl_jax.eval.data_spec import load_data_spec
    from prorl_jax.eval.runner import (
        batch_seed,
        evaluate_records,
        tokenizer_decoder,
        validate_records,
    )

    model_dir = models[1]
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg, params = pj.load_hf(model_dir)
    fmt = ChatFormatter(tok, max_prompt_tokens=1024)
    records = load_data_spec("reasoning_gym:chain_sum:3", seed=5)
    sampling = pj.SamplingParams(temperature=1.0, max_new_tokens=8, n=3, stop_token_ids=(1,))
    # Scores: 1 for completions of even length, so the wiring of rewards to prompts shows.
    calls = []

    def score(items):
        calls.append(len(items))
        return [float(len(c) % 2 == 0) for _, c, _ in items]

    batches = []
    results = evaluate_records(cfg, params, records, encode=fmt.encode,
                               decode=tokenizer_decoder(tok), score=score, sampling=sampling,
                               seed=3, batch_prompts=2,
                               on_batch=lambda b: (batches.append(b), calls.append("|")))
    assert [r.id for r in results] == [r.id for r in records]
    # Each batch's completions are all scored (the continuous engine scores them in
    # pieces, as they finish) before the batch is reported.
    per_batch = [sum(map(int, part.split())) for part in
                 " ".join(str(c) for c in calls).split("|")[:-1]]
    assert per_batch == [6, 3] and [len(b) for b in batches] == [2, 1]
    ids = [fmt.encode(r) for r in records[:2]]
    ref = pj.generate(cfg, params, ids, sampling, seed=batch_seed(3, [r.id for r in records[:2]]))
    for i in range(2):
        for j in range(3):
            row = i * 3 + j
            n = int(ref.lengths[row]) - int(ref.finished[row])
            text = tok.decode(ref.tokens[row, :n].tolist(), skip_special_tokens=False)
            assert results[i].completions[j] == text
            assert results[i].rewards[j] == float(len(text) % 2 == 0)
            assert results[i].finished[j] == bool(ref.finished[row])

    # The trainer's validation: the same code path, reduced to pass@1 / mean reward.
    metrics = validate_records(cfg, params, fmt, tok, records, score, n=3, temperature=1.0,
                               top_p=1.0, max_new_tokens=8, stop_token_ids=(1,), seed=3,
                               batch_prompts=2)
    flat = [x for r in results for x in r.rewards]
    assert metrics["val/pass@1"] == pytest.approx(np.mean(flat))
    assert metrics["val/reward/mean"] == pytest.approx(np.mean(flat))
    assert metrics["val/pass@1/reasoning_gym"] == metrics["val/pass@1"]

    # A prompt the formatter drops (too long) is skipped, not truncated.
    short = ChatFormatter(tok, max_prompt_tokens=5)
    assert evaluate_records(cfg, params, records, encode=short.encode,
                            decode=tokenizer_decoder(tok), score=score, sampling=sampling) == []
    assert short.dropped == 3


@pytest.mark.parametrize("argv,msg", [
    (["--data", "reasoning_gym:chain_sum:2", "--n", "4", "--k", "8"], "exceeds --n 4"),
    (["--data", "reasoning_gym:chain_sum:x"], "N must be an integer"),
    (["--data", "nope.jsonl"], "data file not found"),
    (["--data", "reasoning_gym:chain_sum:2", "--label", "a", "--label", "b"], "--label given 2"),
    (["--data", "reasoning_gym:chain_sum:2", "--task-config", "{bad"], "not valid JSON"),
    (["--data", "reasoning_gym:chain_sum:2", "--task-config", '{"boxnet": {}}'],
     "not in tasks"),
    (["--data", "reasoning_gym:chain_sum:2", "--suffix", "poetry=x"], "expected DOMAIN=TEXT"),
])
def test_cli_user_errors(models, tmp_path, capsys, argv, msg):
    # --max-new-tokens: the default 32768 does not fit the tiny model (its own error, below).
    code = main(["eval", "--model", models[1], "--out", str(tmp_path / "o"),
                 "--max-new-tokens", "12", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_missing_model_dir(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "none"), "--data", "reasoning_gym:chain_sum:1",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "model directory not found" in capsys.readouterr().err


def test_data_spec_forms(tmp_path):
    from prorl_jax.eval.data_spec import load_data_spec, parse_data_spec

    cfg = parse_data_spec("reasoning_gym:chain_sum, boxnet:7", seed=3)
    assert (cfg.kind, cfg.tasks, cfg.size, cfg.seed) == ("reasoning_gym", ("chain_sum", "boxnet"),
                                                        7, 3)
    assert parse_data_spec("reasoning_gym:chain_sum").size == 50
    with pytest.raises(EvalError):
        parse_data_spec("reasoning_gym:")
    schema = tmp_path / "s.jsonl"
    schema.write_text(json.dumps({"id": "q1", "domain": "math", "prompt": "1+1?",
                                  "ground_truth": "2", "meta": {"task": "toy"}}) + "\n")
    assert parse_data_spec(str(schema)).kind == "jsonl"
    verl = tmp_path / "v.jsonl"
    verl.write_text(json.dumps({"data_source": "deepscaler", "ability": "math",
                                "prompt": [{"role": "user", "content": "1+1?"}],
                                "reward_model": {"ground_truth": "2", "style": "rule"},
                                "extra_info": {"index": 0}}) + "\n")
    assert parse_data_spec(str(verl)).kind == "verl"
    assert parse_data_spec(f"verl:{verl}").kind == "verl"
    [rec] = load_data_spec(str(verl))
    assert rec.domain == "math"
    dup = tmp_path / "d.jsonl"
    dup.write_text(schema.read_text() * 2)
    with pytest.raises(EvalError, match="occurs more than once"):
        load_data_spec(str(dup))
