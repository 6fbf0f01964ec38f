"""load_tokenizer honours a checkpoint's own non-byte-level tokenizer.json; stop_token_ids
merges every EOS source of a checkpoint."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from prorl_jax.errors import CheckpointError
from prorl_jax.tokenizer import load_tokenizer, stop_token_ids


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


def test_stop_token_ids_merge_all_sources(tmp_path):
    import types

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    tok = types.SimpleNamespace(eos_token_id=3)
    cfg = types.SimpleNamespace(eos_token_id=9)
    assert stop_token_ids(str(tmp_path), tok, cfg) == (3, 7, 9)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 4}))
    assert stop_token_ids(tmp_path, tok, cfg) == (3, 4, 9)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json is not a valid JSON"):
        stop_token_ids(tmp_path, tok, cfg)
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no eos token"):
        stop_token_ids(str(empty), types.SimpleNamespace(eos_token_id=None),
                       types.SimpleNamespace(eos_token_id=None))
