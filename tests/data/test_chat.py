"""Chat formatting: the tokenizer's template with the generation prompt, per-domain
suffixes, and too-long prompts dropped and counted (never truncated)."""

import pytest

from prorl_jax.data import DEFAULT_SUFFIXES, ChatFormatter, make_record

BOS = "<｜begin▁of▁sentence｜>"


def rec(domain="math", prompt="What is 2+3?", gt=None):
    gts = {"math": "5", "stem": "B", "code": {"inputs": ["1"], "outputs": ["1"]},
           "reasoning_gym": {"task": "gcd", "entry": {"question": "q", "answer": "1"}},
           "ifeval": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}}
    return make_record("r", domain, prompt, gt if gt is not None else gts[domain])


def test_r1_template_with_generation_prompt_and_math_suffix(r1_tokenizer):
    fmt = ChatFormatter(r1_tokenizer, None, max_prompt_tokens=512)
    text = fmt.text(rec())
    assert text == (f"{BOS}<｜User｜>What is 2+3? Let's think step by step and output the final "
                    "answer within \\boxed{}.<｜Assistant｜><think>\n")
    ids = fmt.encode(rec())
    assert ids[:2] == r1_tokenizer.convert_tokens_to_ids([BOS, "<｜User｜>"])
    assert ids.count(r1_tokenizer.bos_token_id) == 1  # the template's BOS only
    assert r1_tokenizer.decode(ids) == text


@pytest.mark.parametrize("domain,needle", [
    ("reasoning_gym", "<answer></answer>"), ("code", "```python"), ("stem", "\\boxed{}")])
def test_default_suffix_per_domain(r1_tokenizer, domain, needle):
    text = ChatFormatter(r1_tokenizer, None, 512).text(rec(domain))
    assert needle in DEFAULT_SUFFIXES[domain]
    assert f"What is 2+3? {DEFAULT_SUFFIXES[domain]}<｜Assistant｜>" in text


def test_ifeval_gets_no_suffix_and_suffixes_are_configurable(r1_tokenizer):
    assert ChatFormatter(r1_tokenizer, None, 512).text(rec("ifeval")) == \
        f"{BOS}<｜User｜>What is 2+3?<｜Assistant｜><think>\n"
    fmt = ChatFormatter(r1_tokenizer, {"math": "Answer in \\boxed{}.", "stem": ""}, 512)
    assert "2+3? Answer in \\boxed{}.<｜Assistant｜>" in fmt.text(rec("math"))
    assert "2+3?<｜Assistant｜>" in fmt.text(rec("stem"))
    assert DEFAULT_SUFFIXES["code"] in fmt.text(rec("code"))  # others keep their defaults


def test_suffix_goes_on_the_last_user_message_once(r1_tokenizer):
    msgs = [{"role": "system", "content": "Be terse."},
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "What is 2+3?"}]
    fmt = ChatFormatter(r1_tokenizer, None, 512)
    out = fmt.messages(rec(prompt=msgs))
    assert out[1]["content"] == "first"
    assert out[3]["content"] == f"What is 2+3? {DEFAULT_SUFFIXES['math']}"
    assert msgs[3]["content"] == "What is 2+3?"  # the record is not modified
    already = rec(prompt=f"What is 2+3? {DEFAULT_SUFFIXES['math']}")
    assert fmt.text(already).count(DEFAULT_SUFFIXES["math"]) == 1


def test_too_long_prompts_are_dropped_and_counted(r1_tokenizer):
    short, long_ = rec(prompt="Hi?"), rec(prompt="x" * 300)
    n_short = len(ChatFormatter(r1_tokenizer, None, 10_000).encode(short))
    fmt = ChatFormatter(r1_tokenizer, None, max_prompt_tokens=n_short)
    assert fmt.encode(short) is not None and fmt.dropped == 0
    assert fmt.encode(long_) is None
    kept, ids = fmt.encode_batch([long_, short, rec("code", prompt="y" * 300)])
    assert kept == [short] and len(ids[0]) == n_short
    assert fmt.dropped == 3 and fmt.dropped_by_domain == {"math": 2, "code": 1}


def test_plain_text_without_a_chat_template(plain_tokenizer, r1_tokenizer):
    text = f"What is 2+3? {DEFAULT_SUFFIXES['math']}"
    assert ChatFormatter(plain_tokenizer, None, 512).text(rec()) == text
    forced = ChatFormatter(r1_tokenizer, None, 512, use_chat_template=False)
    assert forced.text(rec()) == text
    assert forced.encode(rec()) == r1_tokenizer(text)["input_ids"]
    two = rec(prompt=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert forced.text(two) == f"S\n\nU {DEFAULT_SUFFIXES['math']}"
