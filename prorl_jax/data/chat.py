"""Rendering a record into the prompt tokens the sampler starts from.

The record's messages (a plain-text prompt is one user message) get the domain's
instruction suffix appended to the last user message, then go through the checkpoint
tokenizer's chat template with the generation prompt (for DeepSeek-R1-Distill that ends
"<｜Assistant｜><think>\\n"). Prompts longer than the limit are dropped and counted, never
truncated: a truncated problem is a different problem with the old answer.
"""

from __future__ import annotations

import collections
import logging

from prorl_jax.data.records import Record

log = logging.getLogger(__name__)

DEFAULT_SUFFIXES = {
    # ProRL / DeepScaleR, verbatim.
    "math": "Let's think step by step and output the final answer within \\boxed{}.",
    # The code verifier runs the last ```python block.
    "code": "Write your final solution as a complete Python program inside a single "
            "```python code block.",
    # The STEM verifier reads \boxed{} (or an "Answer: X" line).
    "stem": "Let's think step by step and output the final answer within \\boxed{}.",
    # The Reasoning Gym verifier scores the text inside the last <answer></answer>.
    "reasoning_gym": "Think step by step, then give only the final answer inside "
                     "<answer></answer> tags.",
    # IFEval prompts carry their own instructions; any addition would change the task.
    "ifeval": "",
}


class ChatFormatter:
    """Turns records into prompt token ids with the tokenizer's chat template.

    Args:
      tokenizer: a transformers tokenizer (the checkpoint's).
      suffixes: domain -> instruction suffix, overriding DEFAULT_SUFFIXES per domain
        ("" disables a domain's suffix); None = the defaults.
      max_prompt_tokens: longer prompts are dropped (encode returns None) and counted.
      use_chat_template: False renders plain text (+ suffix) even if the tokenizer has a
        chat template; True falls back to plain text when it has none.
    """

    def __init__(self, tokenizer, suffixes: dict[str, str] | None = None,
                 max_prompt_tokens: int = 1024, use_chat_template: bool = True):
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        self.tokenizer = tokenizer
        self.suffixes = {**DEFAULT_SUFFIXES, **(suffixes or {})}
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.dropped = 0
        self.dropped_by_domain: collections.Counter = collections.Counter()

    def messages(self, record: Record) -> list[dict[str, str]]:
        """The record's chat messages with the domain suffix added to the last user turn.

        The suffix is not added again when that message already contains it (verl datasets
        usually ship prompts with the instruction built in).
        """
        msgs = ([{"role": "user", "content": record.prompt}] if isinstance(record.prompt, str)
                else [dict(m) for m in record.prompt])
        suffix = self.suffixes.get(record.domain, "")
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        content = msgs[last_user]["content"]
        if suffix and suffix not in content:
            # A single space, as DeepScaleR built its prompts.
            msgs[last_user]["content"] = f"{content.rstrip()} {suffix}"
        return msgs

    def text(self, record: Record) -> str:
        """The prompt text the model sees (chat template with generation prompt applied)."""
        msgs = self.messages(record)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                      add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in msgs)

    def encode(self, record: Record) -> list[int] | None:
        """Token ids of `text(record)`, or None (counted in `.dropped`) when too long.

        Chat templates write their own BOS, so special tokens are only added by the
        tokenizer for plain text.
        """
        ids = self.tokenizer(self.text(record),
                             add_special_tokens=not self.use_chat_template)["input_ids"]
        ids = [int(t) for t in ids]
        if len(ids) > self.max_prompt_tokens:
            self.dropped += 1
            self.dropped_by_domain[record.domain] += 1
            log.debug("dropped prompt %s: %d tokens > %d", record.id, len(ids),
                      self.max_prompt_tokens)
            return None
        return ids

    def encode_batch(self, records: list[Record]) -> tuple[list[Record], list[list[int]]]:
        """Encodes a batch, dropping prompts that are too long.

        Returns:
          (kept records, their token ids), in input order.
        """
        kept, ids = [], []
        for r in records:
            t = self.encode(r)
            if t is not None:
                kept.append(r)
                ids.append(t)
        return kept, ids
