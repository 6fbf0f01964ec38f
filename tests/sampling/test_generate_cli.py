"""`prorl-jax generate` end to end on a tiny checkpoint with its own tokenizer."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from cli_run import assert_one_line_error, prorl
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import prorl_jax as pj
from prorl_jax.cli import main

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "one two three four five"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
EOS = 0  # <|endoftext|>, the first special token


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 1-layer Qwen2 checkpoint with a byte-level BPE tokenizer and a chat template."""
    path = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.2,
                         eos_token_id=EOS, max_position_embeddings=128)
    Qwen2ForCausalLM(config).save_pretrained(path)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|user|>", "<|assistant|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                            chat_template=TEMPLATE).save_pretrained(path)
    return str(path)


def _reference(model_dir, prompt_ids, **sampling):
    """Texts the library produces for these prompts (what the CLI must print)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg, params = pj.load_hf(model_dir)
    out = pj.generate(cfg, params, prompt_ids,
                      pj.SamplingParams(stop_token_ids=(EOS,), **sampling))
    texts = [tokenizer.decode(out.tokens[r, :int(out.lengths[r]) - int(out.finished[r])].tolist())
             for r in range(len(out.lengths))]
    return texts, out


def _run(argv, capsys):
    code = main(["generate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prompts_file_to_jsonl_matches_library_generate(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "the cat sat"}, {"prompt": "dog"}, {"id": "c", "prompt": "one two"},
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = _run(["--model", model_dir, "--prompts", str(prompts), "--n", "2",
                         "--temperature", "0", "--max-new-tokens", "8", "--out", str(out)], capsys)
    assert code == 0, err
    assert "3/3" in err  # the progress bar ran to the end
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "1", "c"]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, ref = _reference(model_dir, [tokenizer.encode(r["prompt"]) for r in records],
                            temperature=0, max_new_tokens=8, n=2)
    for i, rec in enumerate(records):
        assert rec["completions"] == texts[2 * i:2 * i + 2]
        assert rec["completions"][0] == rec["completions"][1]  # greedy: both samples agree
        assert rec["lengths"] == ref.lengths[2 * i:2 * i + 2].tolist()
        assert rec["finished"] == ref.finished[2 * i:2 * i + 2].tolist()


def test_single_prompt_prints_text_and_chat_uses_template(model_dir, capsys):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    code, out, err = _run(["--model", model_dir, "--prompt", "the mat", "--temperature", "0",
                           "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    texts, _ = _reference(model_dir, [tokenizer.encode("the mat")], temperature=0,
                          max_new_tokens=8)
    assert out == texts[0] + "\n"
    code, out, err = _run(["--model", model_dir, "--prompt", "the mat", "--chat",
                           "--temperature", "0", "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    ids = tokenizer.encode("<|user|>the mat<|assistant|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2  # the template's special tokens are single tokens
    texts, _ = _reference(model_dir, [ids], temperature=0, max_new_tokens=8)
    assert out == texts[0] + "\n"


def test_sampling_options_reach_the_sampler(model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    args = ["--model", model_dir, "--prompt", "the", "--n", "4", "--temperature", "1.5",
            "--top-k", "5", "--max-new-tokens", "8", "--seed", "3", "--out", str(out)]
    assert _run(args, capsys)[0] == 0
    first = json.loads(out.read_text())
    assert _run(args, capsys)[0] == 0
    assert json.loads(out.read_text()) == first  # same seed, same samples
    assert len(set(first["completions"])) > 1  # n=4 distinct random samples
    assert np.all(np.array(first["lengths"]) <= 8)


@pytest.mark.parametrize("argv,message", [
    (["--model", "/nonexistent", "--prompt", "the"], "model directory not found"),
    (["--prompts", "{bad}"], "invalid JSON"),
    (["--prompts", "{chat}"], "pass --chat"),
    (["--prompts", "/nonexistent.jsonl"], "prompts file not found"),
    (["--prompt", "the", "--top-p", "0"], "top_p"),
    (["--prompt", "the", "--engine", "paged"], "sampling.engine"),
    (["--prompt", "the", "--decode-slots", "0"], "sampling.decode_slots"),
])
def test_user_errors_exit_2_with_one_line(model_dir, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "the"}\nnot json\n')
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": [{"role": "user",
                                                                 "content": "the"}]}) + "\n")
    files = {"{bad}": str(tmp_path / "bad.jsonl"), "{chat}": str(tmp_path / "chat.jsonl")}
    argv = [files.get(a, a) for a in argv]
    if "--model" not in argv:
        argv = ["--model", model_dir, *argv]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- newcomer cases (subprocess)


def test_builtin_demo_base_and_unusable_out(tmp_path):
    out = tmp_path / "sub" / "o.jsonl"
    proc = prorl("generate", "--model", "builtin:demo_base", "--prompt", "1 + 2 =",
                 "--temperature", "0", "--max-new-tokens", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text())["completions"]) == 1
    proc = prorl("generate", "--model", "builtin:demo_base", "--prompt", "1", "--out",
                 str(tmp_path))
    assert_one_line_error(proc, "--out", "is a directory, expected a file name")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        proc = prorl("generate", "--model", "builtin:demo_base", "--prompt", "1", "--out",
                     str(ro / "o.jsonl"))
        assert_one_line_error(proc, "--out", "ro is not writable")
        assert list(ro.iterdir()) == []
    finally:
        os.chmod(ro, 0o755)
    proc = prorl("generate", "--model", "builtin:nope", "--prompt", "1")
    assert_one_line_error(proc, "model directory not found: builtin:nope")


def test_model_without_tokenizer_says_so(model_dir, tmp_path):
    from prorl_jax.tokenizer import TOKENIZER_FILES

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    proc = prorl("generate", "--model", str(bare), "--prompt", "the cat")
    assert_one_line_error(proc, f"{bare} has no tokenizer")
