"""IFEval-style instruction following: reward = fraction of the prompt's verifiable
instructions the response satisfies (strict checking, response = text after `</think>`).

Instruction ids and kwarg names follow the IFEval paper (Zhou et al., 2023). Each checker
gives the verdict of the reference implementation the IFEval data was built with (Google's
`instructions.py`, as shipped in lm-eval); tests/rewards/test_ifeval_parity.py scores
generated responses for all 25 ids with both and lists the few deliberate differences
(docs/rewards.md). Relations are "less than" (count < N) and "at least" (count >= N).
"""

import functools
import json
import re
from collections.abc import Callable

from prorl_jax.errors import DataError
from prorl_jax.rewards import ifeval_text
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


# --- keywords ---------------------------------------------------------------------------

def _keyword_count(text: str, keyword: str) -> int:
    # Substring matches, any case ("bananas" has "banana"), as the reference counts. The
    # reference uses the keyword as a regex; we escape it (no data keyword has a metachar).
    return len(re.findall(re.escape(keyword.strip()), text, re.IGNORECASE))


@_checker("keywords:existence", "keywords")
def keywords_existence(text, keywords):
    return all(_keyword_count(text, k) > 0 for k in keywords)


# --- language ----------------------------------------------------------------------------

@_checker("language:response_language", "language")
def response_language(text, language):
    return ifeval_text.language_is(text, language)


@_checker("keywords:frequency", "keyword", "frequency", "relation")
def keywords_frequency(text, keyword, frequency, relation):
    return _relation(_keyword_count(text, keyword), int(frequency), relation)


@_checker("keywords:forbidden_words", "forbidden_words")
def keywords_forbidden(text, forbidden_words):
    # Whole words only here (the reference: \bword\b), so "catalog" does not use "cat".
    return not any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE)
                   for w in forbidden_words)


@_checker("keywords:letter_frequency", "letter", "let_frequency", "let_relation")
def letter_frequency(text, letter, let_frequency, let_relation):
    return _relation(text.lower().count(letter.lower()), int(let_frequency), let_relation)


# --- length constraints -------------------------------------------------------------------

@_checker("length_constraints:number_words", "num_words", "relation")
def number_words(text, num_words, relation):
    return _relation(len(_words(text)), int(num_words), relation)


@_checker("length_constraints:number_sentences", "num_sentences", "relation")
def number_sentences(text, num_sentences, relation):
    return _relation(len(ifeval_text.sentences(text)), int(num_sentences), relation)


@_checker("length_constraints:number_paragraphs", "num_paragraphs")
def number_paragraphs(text, num_paragraphs):
    # Paragraphs are separated by the markdown divider ***. An empty paragraph before the
    # first or after the last divider is not counted; one between two dividers fails.
    parts = re.split(r"\s?\*\*\*\s?", text)
    inner = parts[1:-1]
    if any(not p.strip() for p in inner):
        return False
    return sum(1 for p in parts if p.strip()) == int(num_paragraphs)


_FIRST_WORD_END = set(".,?!'\"")


@_checker("length_constraints:nth_paragraph_first_word", "num_paragraphs", "nth_paragraph",
          "first_word")
def nth_paragraph_first_word(text, num_paragraphs, nth_paragraph, first_word):
    # Here paragraphs are separated by "\n\n"; empty ones are not counted, but the nth is
    # counted among all of them (as in the reference), and an empty nth fails.
    parts = text.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    nth = int(nth_paragraph)
    if not 1 <= nth <= count or not parts[nth - 1].strip():
        return False
    word = parts[nth - 1].split()[0].lstrip("'").lstrip('"')
    head = ""
    for ch in word:  # the word up to its first punctuation mark
        if ch in _FIRST_WORD_END:
            break
        head += ch.lower()
    return count == int(num_paragraphs) and head == first_word.lower()


# --- detectable content ------------------------------------------------------------------

@_checker("detectable_content:number_placeholders", "num_placeholders")
def number_placeholders(text, num_placeholders):
    # Any bracketed span on one line, empty ones too ("[]"), as the reference counts.
    return len(re.findall(r"\[.*?\]", text)) >= int(num_placeholders)


_POSTSCRIPT = {"P.P.S": r"p\.\s?p\.\s?s", "P.S.": r"p\.\s?s\."}


@_checker("detectable_content:postscript", "postscript_marker")
def postscript(text, postscript_marker):
    # Anywhere in the text, any case; "P.S." also matches "p. s.". Other markers match
    # literally (the reference reads them as a regex).
    pattern = _POSTSCRIPT.get(postscript_marker, re.escape(postscript_marker.lower()))
    return re.search(pattern, text.lower()) is not None


# --- detectable format -------------------------------------------------------------------

@_checker("detectable_format:number_bullet_lists", "num_bullets")
def number_bullet_lists(text, num_bullets):
    # Lines starting with "*" (not "**") or "-", no space needed, as the reference counts.
    stars = re.findall(r"^\s*\*[^*].*$", text, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(stars) + len(dashes) == int(num_bullets)


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@_checker("detectable_format:constrained_response")
def constrained_response(text):
    return any(option in text.strip() for option in _CONSTRAINED)


@_checker("detectable_format:number_highlighted_sections", "num_highlights")
def number_highlighted_sections(text, num_highlights):
    # As the reference: every *...* span with text counts, and a **...** span counts again.
    single = re.findall(r"\*([^\n*]*)\*", text)
    double = re.findall(r"\*\*([^\n*]*)\*\*", text)
    return sum(1 for h in single + double if h.strip()) >= int(num_highlights)


@_checker("detectable_format:multiple_sections", "section_spliter", "num_sections")
def multiple_sections(text, section_spliter, num_sections):
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, text)) - 1 >= int(num_sections)


@_checker("detectable_format:json_format")
def json_format(text):
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # in turn, as the reference
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
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
    capitals = [w for w in ifeval_text.word_tokens(text) if w.isupper()]
    return _relation(len(capitals), int(capital_frequency), capital_relation)


@_checker("change_case:english_capital")
def english_capital(text):
    return text.isupper() and ifeval_text.language_is(text, "en")


@_checker("change_case:english_lowercase")
def english_lowercase(text):
    return text.islower() and ifeval_text.language_is(text, "en")


@_checker("punctuation:no_comma")
def no_comma(text):
    return "," not in text


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
