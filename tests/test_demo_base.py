"""The shipped demo base model (prorl_jax/assets/demo_base): loads everywhere, formats, fits.

Fast: the checkpoint has 0.8M parameters and the tokenizer ~100 tokens.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BASE = REPO / "prorl_jax" / "assets" / "demo_base"
SIZE_LIMIT = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def demo_task():
    spec = importlib.util.spec_from_file_location("demo_task", REPO / "tools" / "demo_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BASE), local_files_only=True)


def test_size_limit():
    files = [p for p in BASE.rglob("*") if p.is_file()]
    assert files, f"{BASE} is empty"
    assert sum(p.stat().st_size for p in files) <= SIZE_LIMIT


def test_builtin_path_resolves_to_the_asset():
    from prorl_jax.paths import resolve_model_dir

    assert pathlib.Path(resolve_model_dir("builtin:demo_base")).resolve() == BASE.resolve()


def test_tokenizer_special_tokens(tokenizer, demo_task):
    assert tokenizer.eos_token == demo_task.EOS
    assert tokenizer.pad_token == demo_task.PAD
    assert tokenizer.pad_token_id == 0  # the sampler writes token 0 after a row's stop
    for tag in demo_task.TAG_TOKENS:  # one token each, kept by skip_special_tokens
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == tag


def test_chat_template_renders(tokenizer, demo_task):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Calculate 1 + 2."}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nCalculate 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    record = demo_task.records(1, seed=123)[0]
    assert demo_task.formatter(tokenizer).text(record) == (
        f"<|im_start|>user\n{record.prompt} {demo_task.SUFFIX}<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_tokenizer_round_trips_task_text(tokenizer, demo_task):
    records = demo_task.records(64, seed=123)
    fmt = demo_task.formatter(tokenizer)
    texts = [fmt.text(r) for r in records]
    texts += [demo_task.response_text(r.ground_truth["entry"]["answer"]) + tokenizer.eos_token
              for r in records]
    texts += ["  two  spaces\n\ttab and newline ", "x<answer> 3 </answer>y", "caf\u00e9 \u2192 ok"]
    built = demo_task.build_tokenizer()  # what tools/make_demo_base.py writes
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        assert built.encode(text, add_special_tokens=False) == ids
    # Every demo prompt fits the sampler's smallest prompt bucket.
    assert all(fmt.encode(r) is not None for r in records)
    assert max(len(fmt.encode(r)) for r in records) <= demo_task.MAX_PROMPT_TOKENS


def test_load_hf_matches_transformers(tokenizer):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    import prorl_jax as pj

    cfg, params = pj.load_hf(str(BASE))
    assert cfg.model_type == "qwen2"
    assert cfg.vocab_size == len(tokenizer)
    assert cfg.eos_token_id == tokenizer.eos_token_id
    text = "<|im_start|>user\nCalculate 6 + 10 - 3. Answer in <answer></answer>.<|im_end|>\n"
    tokens = np.asarray([tokenizer.encode(text, add_special_tokens=False)], np.int32)
    ours = np.asarray(pj.forward(cfg, params, tokens))

    model = AutoModelForCausalLM.from_pretrained(str(BASE), local_files_only=True,
                                                 dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_warmup_data_describes_the_build_and_holds_out_the_demo_val_prompts(tmp_path, demo_task):
    """warmup_data.json is what tools/make_demo_base.py writes, its removed source is the
    demo's data.val_sources, and the regenerated warm-up shares no prompt with it."""
    import json
    import sys

    from prorl_jax.config import load_config, resolve_config_path, to_dict
    from prorl_jax.rl import boundary

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_demo_base
    finally:
        sys.path.remove(str(REPO / "tools"))
    make_demo_base.write_warmup_data(tmp_path)
    shipped = json.loads((BASE / "warmup_data.json").read_text())
    assert json.loads((tmp_path / "warmup_data.json").read_text()) == shipped
    cfg = load_config(resolve_config_path("demo"))
    assert shipped["minus"] == [to_dict(s) for s in cfg.data.val_sources]
    warmup = boundary.warmup_prompts(BASE)
    held_out = demo_task.records(256, demo_task.EVAL_SEED)
    assert len(warmup) > 1000
    assert boundary.overlap(held_out, set(), warmup)["warmup"] == 0
