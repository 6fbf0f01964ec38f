"""load_tokenizer honours a checkpoint's own non-byte-level tokenizer.json."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from prorl_jax.errors import CheckpointError
from prorl_jax.tokenizer import load_tokenizer


@pytest.fixture()
def char_tokenizer_dir(tmp_path):
    chars = ["<eos>", *"abc \n"]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(tmp_path)
    # A qwen2 config.json beside it, as in every checkpoint directory.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return tmp_path


def test_declared_generic_tokenizer_keeps_whitespace(char_tokenizer_dir):
    text = "ab c\ncab"
    tok = load_tokenizer(char_tokenizer_dir)
    assert tok.decode(tok.encode(text)) == text
    # What this guards against: AutoTokenizer swaps in the qwen2 class and loses the spaces.
    auto = AutoTokenizer.from_pretrained(str(char_tokenizer_dir))
    assert auto.decode(auto.encode(text)) != text


def test_missing_tokenizer_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_tokenizer(tmp_path)
    # A model directory without tokenizer files: transformers would build an empty tokenizer
    # from config.json alone (every prompt then "encodes to no tokens"); we say what is missing.
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"has no tokenizer \(none of tokenizer.json"):
        load_tokenizer(tmp_path)
    # A vocabulary file that transformers cannot read is still reported as unloadable.
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(CheckpointError, match="no loadable tokenizer"):
        load_tokenizer(tmp_path)
