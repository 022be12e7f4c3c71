"""Answer extractors: the letter A-D in a model's free-form response, three ways.

Which extractor scored a run changes its accuracy by points, so every record and every run's ``config.json``
names it, and ``vlmzip report`` refuses to put runs scored differently in one table unless told to.

``vlmzip`` (the default)
    vlmzip's own, the one most often right against a human reading: an explicit answer statement ("the answer
    is D", "Answer: (b)", "the correct option is C"; the last one when there are several) gives its letter,
    whatever letters come before it ("Not C, the answer is D." -> D). Otherwise the answer prefixes ("The best
    answer is", "Answer:", ...) are removed and a response that is only a letter (``"b"``, ``"(C)."``) or starts
    like an option (``"b. text"``, ``"A) text"``) gives that letter; otherwise the first standalone capital A-D
    (not inside a word: the B of "Based" is no answer), skipping an article "A" ("A man walks ...") when another
    letter follows, but not an "A" followed by a verb or conjunction ("A is correct because B is wrong." -> A).
    No letter: unparsed (``None``).
``lmms-eval``
    lmms-eval 0.7.3's ranked extractor (``lmms_eval/tasks/_task_utils/mcq_extract.py``, used by its Video-MME
    task since 0.7.2, with choices A-D), reimplemented: every way a letter can appear is a candidate with a
    rank (the response starts with the letter 10, ends with it 9, follows an answer phrase 7, "(X)" 6, "X." 5,
    "X:" 4, "X)" 3, "X " 2); the highest rank wins, and within a rank the candidate nearest the end. Its quirks
    are kept: after an answer phrase *every* capital A-D later in the text is a candidate, even inside a word
    ("The answer is B. A dog." -> A), and "X " matches the last letter of any word ("DNA is ..."). With no
    candidate at all, the last capital A-D anywhere; none: unparsed.
``videomme-authors``
    The Video-MME authors' ``extract_characters_regex`` (their ``eval_your_results.py``), which lmms-eval used up
    to 0.7.1, bug for bug: a few prefixes removed (case-sensitive, two of them glued together by missing commas,
    so never found), then the first capital A-D anywhere, even inside a word ("Based on the video, C" -> B); a
    response of more than 10 words with no capital A-D is unparsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vlmzip.errors import InputError

__all__ = ["EXTRACTORS", "extract_answer"]

LETTERS = "ABCD"

# --------------------------------------------------------------------------------------------------------- vlmzip

_PREFIXES = (
    "the best answer is",
    "the correct answer is",
    "the answer is",
    "the answer",
    "the best option is",
    "the correct option is",
    "best answer:",
    "best option:",
    "final answer:",
    "answer:",
    "option:",
)
_PREFIX_RE = re.compile("|".join(re.escape(p) for p in sorted(_PREFIXES, key=len, reverse=True)), re.IGNORECASE)
_STATEMENT = re.compile(
    r"\b(?i:answer|option|choice)"
    r"(?:\s+(?i:is|was|would\s+be|should\s+be|must\s+be|will\s+be)\s*[:：=]?|\s*[:：=])"
    r"\s*[(\[{*\"'`]*\s*([A-Da-d])(?!['’]?[A-Za-z0-9])"
)
_ONLY_LETTER = re.compile(r"[\s(\[{\"'*`]*([A-Da-d])[\s)\]}\"'*`.:,;!]*")
_LEADING_OPTION = re.compile(r"[\s(\[{*`]*([A-Da-d])[.)\]:](?:\s|$)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?!['’]?[A-Za-z0-9])")
# An "A" followed by a lower-case word is an article ("A man ..."), unless that word is a verb or conjunction:
# then the A is the subject ("A is correct", "A and C are wrong").
_NOT_ARTICLE = (
    "is|was|seems|appears|looks|would|could|should|can|might|must|may|will|fits|matches|describes|shows|"
    "and|or|because|since"
)
_ARTICLE_A = re.compile(rf"A\s+(?!(?:{_NOT_ARTICLE})\b)[a-z]")


def _extract_vlmzip(response: str) -> str | None:
    text = " ".join(response.split())
    for statement in reversed(list(_STATEMENT.finditer(text))):
        letter = statement.group(1)
        if letter == "a" and re.match(r"\s+[a-z]", text[statement.end() :]):
            continue  # "the answer is a dog": an article, not the letter
        return letter.upper()
    text = " ".join(_PREFIX_RE.sub(" ", text).split())
    for pattern in (_ONLY_LETTER.fullmatch, _LEADING_OPTION.match):
        match = pattern(text)
        if match:
            return match.group(1).upper()
    candidates = list(_STANDALONE.finditer(text))
    if not candidates:
        return None  # includes long responses without a standalone letter
    first = candidates[0]
    if first.group(1) == "A" and len(candidates) > 1 and _ARTICLE_A.match(text, first.start()):
        first = candidates[1]
    return first.group(1)


# ------------------------------------------------------------------------------------------------------ lmms-eval

# lmms-eval 0.7.3's answer phrases, in its order (each is looked for once, at its first occurrence, lower case).
_LMMS_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
# (rank, text around the letter) of the literal forms; the letter's position is where the form last occurs.
_LMMS_FORMS = ((6, "({})"), (5, "{}."), (4, "{}:"), (3, "{})"), (2, "{} "))
_LMMS_START, _LMMS_END, _LMMS_PHRASE = 10, 9, 7


def _extract_lmms_eval(response: str) -> str | None:
    if not response.strip():
        return None
    text = response.strip()
    for mark in ",.!?;:'\"":  # one mark at a time, each from both ends: ".A," keeps its "."
        text = text.strip(mark)
    text = f" {text} "
    ranked: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for rank, form in _LMMS_FORMS:
        for letter in LETTERS:
            position = text.rfind(form.format(letter))
            if position >= 0:
                ranked.append((rank, position, letter))
    lower = text.lower()  # positions found here index ``text`` (as lmms-eval does, even where lower() changes length)
    for phrase in _LMMS_PHRASES:
        at = lower.find(phrase)
        if at >= 0:
            for letter in LETTERS:
                position = text.find(letter, at + len(phrase))
                if position >= 0:
                    ranked.append((_LMMS_PHRASE, position, letter))
    inner = text.strip()
    if inner and inner[0] in LETTERS and (len(inner) == 1 or not inner[1].isalpha()):
        ranked.append((_LMMS_START, 0, inner[0]))
    if inner and inner[-1] in LETTERS and (len(inner) == 1 or not inner[-2].isalpha()):
        ranked.append((_LMMS_END, len(text) - 1, inner[-1]))
    if not ranked:  # the fallback: the letter that occurs last
        ranked = [(0, text.rfind(letter), letter) for letter in LETTERS if letter in text]
    if not ranked:
        return None
    return max(ranked, key=lambda candidate: candidate[:2])[2]


# --------------------------------------------------------------------------------------------- videomme-authors

# The authors' list as written: the missing commas glue two pairs into strings that never occur.
_AUTHORS_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
_AUTHORS_LONG = 10  # words


def _extract_authors(response: str) -> str | None:
    text = response.strip()
    for prefix in _AUTHORS_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search("[ABCD]", text)
    if match is None:
        return None  # a long response without a capital A-D, or any response without one
    return match[0]


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "vlmzip": _extract_vlmzip,
    "lmms-eval": _extract_lmms_eval,
    "videomme-authors": _extract_authors,
}
_RENAMED = {"standalone": "vlmzip"}


def extract_answer(response: str | None, extractor: str = "vlmzip") -> str | None:
    """The answer letter in a model's response by the named extractor (see :data:`EXTRACTORS` and this module's
    docstring), or ``None`` when it finds none (unparsed; scored wrong, as lmms-eval does)."""
    if extractor not in EXTRACTORS:
        hint = f" ({extractor!r} is now called {_RENAMED[extractor]!r})" if extractor in _RENAMED else ""
        raise InputError(f"unknown answer extractor {extractor!r}{hint}: expected one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[extractor](response or "")
