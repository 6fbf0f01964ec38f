"""Loading a checkpoint's tokenizer, honouring the class the checkpoint declares.

transformers 5's AutoTokenizer picks the tokenizer class registered for config.json's
model_type (e.g. Qwen2Tokenizer for "qwen2") even when tokenizer_config.json declares the
generic fast tokenizer, and Qwen2Tokenizer rebuilds a byte-level pipeline that silently
drops the spaces of a tokenizer.json that is not byte-level. A checkpoint that ships its
own tokenizer.json and declares a generic class gets exactly that tokenizer here.
"""

from __future__ import annotations

import json
import pathlib

from prorl_jax.errors import CheckpointError

GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")

# Every file a checkpoint's tokenizer may consist of (copied together by save_hf) ...
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")
# ... and those that hold a vocabulary: without one, transformers builds an empty tokenizer
# from config.json alone, and every prompt later "encodes to no tokens".
VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def has_tokenizer(path: str | pathlib.Path) -> bool:
    """True when the directory holds a tokenizer vocabulary file."""
    return any((pathlib.Path(path) / name).is_file() for name in VOCAB_FILES)


def require_tokenizer(path: str | pathlib.Path) -> None:
    """Raise CheckpointError, saying so, when the directory has no tokenizer."""
    if not has_tokenizer(path):
        raise CheckpointError(f"{path} has no tokenizer (none of {', '.join(VOCAB_FILES)}); "
                              "copy the tokenizer files of its base model into it")


def load_tokenizer(path: str | pathlib.Path):
    """The tokenizer of a local checkpoint directory (no network).

    Raises:
      CheckpointError when the directory has no loadable tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = pathlib.Path(path)
    require_tokenizer(path)
    config_file = path / "tokenizer_config.json"
    declared = None
    if config_file.is_file():
        try:
            declared = json.loads(config_file.read_text()).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{config_file} is not a valid JSON object: {e}") from None
    try:
        if declared in GENERIC_CLASSES and (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: no loadable tokenizer ({type(e).__name__}: {e})") from None


def stop_token_ids(model_dir: str | pathlib.Path, tokenizer, model_cfg) -> tuple[int, ...]:
    """The token ids that end a completion of a checkpoint: its EOS ids from the tokenizer,
    config.json (`model_cfg.eos_token_id`) and generation_config.json together.

    Instruct checkpoints often list several EOS ids in generation_config.json only (e.g.
    <|im_end|> and <|endoftext|>); training rollouts, validation, `prorl-jax eval` and
    `prorl-jax generate` all stop on this one set.

    Returns:
      the sorted distinct ids.
    Raises:
      CheckpointError: generation_config.json is unreadable, or no source names an EOS.
    """
    ids = {int(v) for v in (tokenizer.eos_token_id, model_cfg.eos_token_id) if v is not None}
    gen_path = pathlib.Path(model_dir) / "generation_config.json"
    if gen_path.is_file():
        try:
            eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{gen_path} is not a valid JSON object: {e}") from None
        if eos is not None:
            ids.update(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]))
    if not ids:
        raise CheckpointError(f"{model_dir}: no eos token in the tokenizer or the configs")
    return tuple(sorted(ids))
