"""The embedded demo's task, prompt format and tokenizer (shared by make_demo_base.py and tests).

One place says what the demo base model was trained on, so the SFT data, the held-out
evaluation, the test and the proposed configs/demo.yaml (docs/demo.md) cannot drift apart.

Task: Reasoning Gym `basic_arithmetic` restricted to 2-3 terms in 0..10 joined by + and -,
without parentheses: "Calculate 6 + 10 - 3." The question is short (byte-level prompts
stay under 64 tokens, one sampler bucket), the answer is at most 3 characters, and a
0.8M-parameter model learns it only partly in a few minutes of CPU training, so RL sees
groups that are all wrong or all right (filtered by dynamic sampling) and mixed ones.
"""

from __future__ import annotations

TASK = "basic_arithmetic"
TASK_CONFIG = {
    "min_terms": 2,
    "max_terms": 3,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+", "-"],
    "allow_parentheses": False,
    "allow_negation": False,
}
# data.suffixes.reasoning_gym of the demo config: ChatFormatter appends it after one space.
# The pipeline's default reasoning_gym suffix (~80 characters) would double the prompt length.
SUFFIX = "Answer in <answer></answer>."
MAX_PROMPT_TOKENS = 64  # the sampler's prompt bucket for every demo prompt

# Seeds: SFT data and held-out evaluation draw from disjoint Reasoning Gym seeds.
SFT_SEED = 1
EVAL_SEED = 2

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, IM_START, EOS]
MODEL_MAX_LENGTH = 2048  # = the model's max_position_embeddings
# The answer tags are ordinary (non-special) added tokens: one token each keeps responses
# ~5 tokens long, and decode(skip_special_tokens=True) still keeps them.
TAG_TOKENS = ["<answer>", "</answer>"]
# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer); with no merges it only decides
# where words break, never which tokens come out, but keeping it makes the tokenizer.json
# identical to what transformers 5 rebuilds for model_type qwen2 (see build_tokenizer).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen2.5-Instruct's layout without its default system prompt (which would cost ~30 tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """GPT-2 / Qwen byte-level alphabet: the printable stand-in for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def build_tokenizer():
    """A byte-level tokenizer with no merges (one token per byte) and a Qwen chat template.

    It is a Qwen2 BPE tokenizer with an empty merge list: the same normalizer,
    pre-tokenizer and decoder as Qwen2. That matters because transformers 5 loads any
    directory whose config.json says model_type qwen2 with its own Qwen2Tokenizer, which
    keeps the vocab and merges of tokenizer.json but rebuilds that pipeline; a plain
    character-level pipeline would lose every space on that path.

    Ids: 0 <|endoftext|> (pad, also the sampler's PAD_TOKEN), 1 <|im_start|>, 2 <|im_end|>
    (eos), 3 + b for byte b, then <answer> and </answer>: 261 tokens.

    Returns:
      a transformers PreTrainedTokenizerFast; save it with `save_tokenizer`.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + byte_symbols())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, out) -> None:
    """save_pretrained, then a tokenizer_config.json that transformers 4.x loads too.

    transformers 5 writes its class as "TokenizersBackend", which 4.x (allowed by
    pyproject) does not know; "Qwen2Tokenizer" is what 5.x uses for qwen2 anyway and what
    4.x maps to Qwen2TokenizerFast, which reads tokenizer.json as it is.
    """
    import json
    import pathlib

    tokenizer.save_pretrained(str(out))
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": EOS, "pad_token": PAD,
              "unk_token": None,
              "clean_up_tokenization_spaces": False, "model_max_length": MODEL_MAX_LENGTH,
              "padding_side": "left"}
    path = pathlib.Path(out) / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def source_config(size: int, seed: int):
    """The data.sources entry that generates the demo's prompts (train or validation)."""
    from prorl_jax.config import SourceConfig

    return SourceConfig(kind="reasoning_gym", tasks=(TASK,), task_config={TASK: TASK_CONFIG},
                        size=size, seed=seed)


def records(size: int, seed: int) -> list:
    """`size` prompt records of the demo task, exactly as the trainer's data pipeline makes them."""
    from prorl_jax.data import load_reasoning_gym

    return load_reasoning_gym(source_config(size, seed))


def formatter(tokenizer):
    """The trainer's prompt renderer with the demo suffix."""
    from prorl_jax.data import ChatFormatter

    return ChatFormatter(tokenizer, {"reasoning_gym": SUFFIX}, MAX_PROMPT_TOKENS)


def response_text(answer: str) -> str:
    """The SFT target for one answer (the model then emits EOS)."""
    return f"<answer>{answer}</answer>"
