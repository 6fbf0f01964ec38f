"""IFEval-style instruction following: reward = fraction of the prompt's verifiable
instructions the response satisfies (strict checking, response = text after `</think>`).

Instruction ids and kwarg names follow the IFEval paper (Zhou et al., 2023); the checkers are
written from its descriptions. Relations are "less than" (count < N) and "at least" (count >= N).
"""

import functools
import json
import re
from collections.abc import Callable

from prorl_jax.errors import DataError
from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.extract import final_text

CHECKERS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {}


def _checker(instruction_id: str, *required: str):
    def register(fn):
        CHECKERS[instruction_id] = (fn, required)
        return fn
    return register


def _relation(count: int, n: int, relation: str) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise DataError(f"IFEval relation must be 'less than' or 'at least', got {relation!r}")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by whitespace (or the end); common abbreviations
    # and decimal numbers do not end one.
    text = re.sub(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|e\.g|i\.e)\.", "<abbr>", text)
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


# --- keywords ---------------------------------------------------------------------------

def _keyword_count(text: str, keyword: str) -> int:
    return len(re.findall(r"(?<!\w)" + re.escape(keyword.strip()) + r"(?!\w)", text, re.IGNORECASE))


@_checker("keywords:existence", "keywords")
def keywords_existence(text, keywords):
    return all(_keyword_count(text, k) > 0 for k in keywords)


@_checker("keywords:frequency", "keyword", "frequency", "relation")
def keywords_frequency(text, keyword, frequency, relation):
    return _relation(_keyword_count(text, keyword), int(frequency), relation)


@_checker("keywords:forbidden_words", "forbidden_words")
def keywords_forbidden(text, forbidden_words):
    return all(_keyword_count(text, w) == 0 for w in forbidden_words)


@_checker("keywords:letter_frequency", "letter", "let_frequency", "let_relation")
def letter_frequency(text, letter, let_frequency, let_relation):
    return _relation(text.lower().count(letter.lower()), int(let_frequency), let_relation)


# --- length constraints -------------------------------------------------------------------

@_checker("length_constraints:number_words", "num_words", "relation")
def number_words(text, num_words, relation):
    return _relation(len(_words(text)), int(num_words), relation)


@_checker("length_constraints:number_sentences", "num_sentences", "relation")
def number_sentences(text, num_sentences, relation):
    return _relation(len(_sentences(text)), int(num_sentences), relation)


@_checker("length_constraints:number_paragraphs", "num_paragraphs")
def number_paragraphs(text, num_paragraphs):
    # Paragraphs are separated by the markdown divider ***; an empty paragraph fails.
    parts = re.split(r"\s?\*\*\*\s?", text.strip())
    return len(parts) == int(num_paragraphs) and all(p.strip() for p in parts)


@_checker("length_constraints:nth_paragraph_first_word", "num_paragraphs", "nth_paragraph",
          "first_word")
def nth_paragraph_first_word(text, num_paragraphs, nth_paragraph, first_word):
    # Here paragraphs are separated by blank lines.
    parts = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    nth = int(nth_paragraph)
    if len(parts) != int(num_paragraphs) or not 1 <= nth <= len(parts):
        return False
    words = _words(parts[nth - 1])
    return bool(words) and words[0].lower() == first_word.strip().lower()


# --- detectable content ------------------------------------------------------------------

@_checker("detectable_content:number_placeholders", "num_placeholders")
def number_placeholders(text, num_placeholders):
    return len(re.findall(r"\[[^\[\]\n]+\]", text)) >= int(num_placeholders)


@_checker("detectable_content:postscript", "postscript_marker")
def postscript(text, postscript_marker):
    # "P.S." also matches "P. S." and "p.s."; the marker must start a line.
    marker = r"\s?".join(re.escape(c) for c in postscript_marker.strip().replace(" ", ""))
    return re.search(r"^\s*" + marker, text, re.IGNORECASE | re.MULTILINE) is not None


# --- detectable format -------------------------------------------------------------------

@_checker("detectable_format:number_bullet_lists", "num_bullets")
def number_bullet_lists(text, num_bullets):
    bullets = re.findall(r"^\s*(?:\*(?!\*)|-)\s+\S", text, re.MULTILINE)
    return len(bullets) == int(num_bullets)


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@_checker("detectable_format:constrained_response")
def constrained_response(text):
    return any(option in text.strip() for option in _CONSTRAINED)


@_checker("detectable_format:number_highlighted_sections", "num_highlights")
def number_highlighted_sections(text, num_highlights):
    single = re.findall(r"(?<!\*)\*([^\n*]+)\*(?!\*)", text)
    double = re.findall(r"\*\*([^\n*]+)\*\*", text)
    return sum(1 for h in single + double if h.strip()) >= int(num_highlights)


@_checker("detectable_format:multiple_sections", "section_spliter", "num_sections")
def multiple_sections(text, section_spliter, num_sections):
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, text)) - 1 >= int(num_sections)


@_checker("detectable_format:json_format")
def json_format(text):
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?```", body, re.DOTALL)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except ValueError:
        return False
    return True


@_checker("detectable_format:title")
def title(text):
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", text))


# --- combination -------------------------------------------------------------------------

@_checker("combination:two_responses")
def two_responses(text):
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


@_checker("combination:repeat_prompt", "prompt_to_repeat")
def repeat_prompt(text, prompt_to_repeat):
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- start / end -------------------------------------------------------------------------

@_checker("startend:end_checker", "end_phrase")
def end_checker(text, end_phrase):
    return text.strip().lower().endswith(end_phrase.strip().lower())


@_checker("startend:quotation")
def quotation(text):
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


# --- case and punctuation ----------------------------------------------------------------

@_checker("change_case:capital_word_frequency", "capital_frequency", "capital_relation")
def capital_word_frequency(text, capital_frequency, capital_relation):
    capitals = [w for w in _words(text) if w.isupper()]
    return _relation(len(capitals), int(capital_frequency), capital_relation)


@_checker("change_case:english_capital")
def english_capital(text):
    return text.isupper()


@_checker("change_case:english_lowercase")
def english_lowercase(text):
    return text.islower()


@_checker("punctuation:no_comma")
def no_comma(text):
    return "," not in text and "，" not in text


def parse_ground_truth(ground_truth) -> list[tuple[str, dict]]:
    """Validate {"instruction_id_list": [...], "kwargs": [...]} (dict or JSON string).

    Args:
      ground_truth: as in the IFEval data; kwargs entries may carry unused keys set to None.

    Returns:
      [(instruction id, kwargs without None values), ...].

    Raises:
      DataError: malformed ground truth, unknown instruction id or a missing kwarg.
    """
    gt = ground_truth
    if isinstance(gt, str | bytes):
        try:
            gt = json.loads(gt)
        except ValueError as e:
            raise DataError(f"ifeval ground truth is not valid JSON: {e}") from None
    ids = gt.get("instruction_id_list") if isinstance(gt, dict) else None
    if not isinstance(ids, list) or not ids:
        raise DataError("ifeval ground truth needs a non-empty 'instruction_id_list'")
    kwargs = gt.get("kwargs") or [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"ifeval ground truth has {len(ids)} instructions but "
                        f"{len(kwargs) if isinstance(kwargs, list) else 'no list of'} kwargs")
    out = []
    for iid, kw in zip(ids, kwargs):
        if iid not in CHECKERS:
            raise DataError(f"unknown IFEval instruction id {iid!r}")
        kw = {k: v for k, v in (kw or {}).items() if v is not None}
        _, required = CHECKERS[iid]
        missing = [k for k in required if k not in kw]
        if missing:
            raise DataError(f"IFEval instruction {iid!r} is missing kwargs {missing}")
        out.append((iid, {k: kw[k] for k in required}))
    return out


@functools.cache
def instruction_ids() -> tuple[str, ...]:
    """The supported IFEval instruction ids.

    Returns:
      Sorted tuple of ids.
    """
    return tuple(sorted(CHECKERS))


def score(completion: str, ground_truth) -> Verdict:
    """Score an instruction-following completion.

    Args:
      completion: model output; checked on the text after `</think>`.
      ground_truth: {"instruction_id_list": [...], "kwargs": [...]}.

    Returns:
      Verdict(fraction of instructions satisfied, the failed ids when not all).
    """
    instructions = parse_ground_truth(ground_truth)
    text = final_text(completion).strip()
    failed = [iid for iid, kw in instructions if not CHECKERS[iid][0](text, **kw)]
    reward = 1.0 - len(failed) / len(instructions)
    return Verdict(reward, f"failed: {', '.join(failed)}" if failed else None)
