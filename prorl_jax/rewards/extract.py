"""Pulling the part a verifier judges out of a completion (shared by the domain verifiers)."""

import re

_THINK_END = "</think>"
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def final_text(completion: str) -> str:
    """The text after the last `</think>`, or the whole completion when there is none.

    Args:
      completion: the decoded model output.

    Returns:
      The part of it that verifiers look at.
    """
    idx = completion.rfind(_THINK_END)
    return completion if idx < 0 else completion[idx + len(_THINK_END):]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces handled.

    Args:
      text: text to search.

    Returns:
      The content between the matching braces, or None if there is no complete box.
    """
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end():i - 1]
    return best


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last complete `<tag>...</tag>` pair, or None.

    Args:
      text: text to search.
      tag: the tag name, e.g. "answer".

    Returns:
      The stripped content, or None.
    """
    matches = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return matches[-1].strip() if matches else None


def last_python_block(text: str) -> str | None:
    """The program in the last ```python fenced block, or None.

    Args:
      text: text to search.

    Returns:
      The block's content, or None when there is no closed python block.
    """
    blocks = _CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def answer_text(domain: str, completion: str) -> str | None:
    """The answer a domain's verifier judges, or None when the completion has none in the
    expected form (a malformed answer): the boxed answer for math, the STEM extractor's
    pick, the last <answer></answer> for Reasoning Gym, the last ```python block for code,
    and the final text for instruction following.

    Args:
      domain: a reward domain (prorl_jax.rewards.DOMAINS).
      completion: the decoded model output.

    Returns:
      The extracted answer, or None.
    """
    text = final_text(completion)
    if domain == "math":
        return last_boxed(text)
    if domain == "stem":
        from prorl_jax.rewards.stem_reward import extract_answer  # stem imports this module

        return extract_answer(completion)
    if domain == "reasoning_gym":
        return last_tag(text, "answer")
    if domain == "code":
        return last_python_block(text)
    if domain == "ifeval":
        return text.strip() or None
    raise ValueError(f"unknown reward domain {domain!r}")
