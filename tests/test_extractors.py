"""The three answer extractors (``vlmzip.eval.extractors``) on a corpus of hand-made responses.

The ``lmms-eval`` and ``videomme-authors`` columns were written down from the real code: lmms-eval 0.7.3's
``extract_mcq_answer(response, choices=["A", "B", "C", "D"])`` (``lmms_eval/tasks/_task_utils/mcq_extract.py``)
and lmms-eval 0.7.1's ``extract_characters_regex`` (the Video-MME authors' function), imported from their wheels
in a throwaway script outside this repository ("" written as None). The ``vlmzip`` column is vlmzip's own
extractor; where a reader would pick another letter, a comment says which.
"""

from __future__ import annotations

import pytest

from vlmzip.errors import InputError
from vlmzip.eval.extractors import EXTRACTORS, extract_answer

# (response, vlmzip, lmms-eval 0.7.3, videomme-authors = lmms-eval 0.7.1)
CORPUS = [
    ("B", "B", "B", "B"),
    ("b", "B", None, None),
    ("(C).", "C", "C", "C"),
    ("D. A fish.", "D", "D", "D"),
    ("c) a bird", "C", None, None),
    ("The best answer is: A", "A", "A", "A"),
    ("The best answer is A.", "A", "A", "A"),
    ("the answer is (d)", "D", None, None),
    ("Answer: b", "B", "A", "A"),
    ("The correct answer is C. A bird.", "C", "A", "C"),
    ("I think B", "B", "B", "B"),
    ("Based on the video, C is right.", "C", "C", "B"),
    ("A man walks his dog, so the answer is B.", "B", "A", "A"),
    ("A is correct.", "A", "A", "A"),
    ("**B**", "B", "B", "B"),
    ("The video shows a person cooking pasta in a small kitchen with many tools around.", None, None, None),
    ("none of them", None, None, None),
    ("", None, None, None),
    ("   ", None, None, None),
    ("Not C, the answer is D.", "D", "D", "C"),
    ("A is correct because B is wrong.", "A", "A", "A"),
    ("The answer is B. A dog.", "B", "A", "B"),
    ("Based on the video, C", "C", "C", "B"),
    ("The answer is C. Wait, actually the answer is D.", "D", "D", "C"),
    ("Option C is wrong; the correct option is A.", "A", "A", "C"),
    ("**Answer:** (B)", "B", "B", "A"),
    ("Answer: **C**", "C", "C", "A"),
    ("The best option is D", "D", "D", "D"),
    ("My answer is: A", "A", "A", "A"),
    ("Final answer: C", "C", "C", "C"),
    ("The answer is a dog, so B.", "B", "B", "B"),
    ("The answer would be C.", "C", "C", "C"),
    ("The correct choice is B", "B", "B", "B"),
    ("I choose D.", "D", "D", "D"),
    ("A. A cat.", "A", "A", "A"),
    ("B) A dog.", "B", "B", "B"),
    ("[C]", "C", "C", "C"),
    ("(A)", "A", "A", "A"),
    ("d.", "D", None, None),
    ("'C'", "C", "C", "C"),
    ("C.", "C", "C", "C"),
    ("D\n", "D", "D", "D"),
    ("B: A dog", "B", "B", "B"),
    ("Option B", "B", "B", "B"),
    ("The best answer is B", "B", "B", "B"),
    ("The best answer isB", "B", "B", "B"),
    ("A dog is shown running, so B.", "B", "A", "A"),
    ("A cat. The best answer is A.", "A", "A", "A"),
    ("A and C are wrong; B is right.", "A", "A", "A"),
    ("Both A and B are possible, but D fits best.", "A", "D", "B"),  # a reader sees D
    ("DNA is mentioned, the answer is C", "C", "C", "D"),
    ("Clearly D", "D", "D", "C"),
    ("Definitely B", "B", "B", "D"),
    ("BBC News is shown. C", "C", "C", "B"),
    ("C is correct. D is not.", "C", "C", "C"),
    ("I would say C, not D.", "C", "D", "C"),
    ("Between B and D, I pick B.", "B", "B", "B"),
    ("It is B.", "B", "B", "B"),
    ("It is b.", None, None, None),  # a reader sees B
    ("The man in the video is holding a red apple and walks to the door of the kitchen.", None, None, None),
    ("I don't know.", None, None, None),
    ("Answer: The video shows a kitchen", None, "A", "A"),
    ("The answer is not clear from the video.", None, None, None),
    ("The best answer is: (C) A bird.", "C", "A", "C"),
    ("答案是 B", "B", "B", "B"),
    ("C, because the man is cooking.", "C", "C", "C"),
    ("The correct answer is D: A fish.", "D", "A", "D"),
    ("Among the options, A seems to fit best.", "A", "A", "A"),
    ("The video does not show A, B or C, so D.", "A", "D", "A"),  # a reader sees D
]


@pytest.mark.parametrize(("response", "vlmzip", "lmms_eval", "authors"), CORPUS)
def test_each_extractor_on_the_corpus(response, vlmzip, lmms_eval, authors):
    assert extract_answer(response, "vlmzip") == vlmzip
    assert extract_answer(response, "lmms-eval") == lmms_eval
    assert extract_answer(response, "videomme-authors") == authors


def test_the_corpus_covers_the_issue_and_the_extractors_disagree_on_it():
    assert len(CORPUS) >= 40
    by_response = {response: rest for response, *rest in CORPUS}
    assert by_response["Not C, the answer is D."] == ["D", "D", "C"]  # an answer statement beats an earlier letter
    assert by_response["A is correct because B is wrong."] == ["A", "A", "A"]  # an "A" before a verb is no article
    assert by_response["The answer is B. A dog."] == ["B", "A", "B"]  # lmms-eval: every capital after the phrase
    assert by_response["Based on the video, C"] == ["C", "C", "B"]  # the authors': the B of "Based"
    differ = [r for r, v, lmms, authors in CORPUS if len({v, lmms, authors}) > 1]
    assert len(differ) >= 20


def test_none_and_empty_responses_are_unparsed_by_every_extractor():
    for name in EXTRACTORS:
        assert extract_answer(None, name) is None and extract_answer("", name) is None


def test_unknown_extractor_names_the_known_ones_and_the_rename():
    with pytest.raises(InputError, match="unknown answer extractor 'llm-judge': expected one of vlmzip, lmms-eval"):
        extract_answer("A", "llm-judge")
    with pytest.raises(InputError, match="'standalone' is now called 'vlmzip'"):
        extract_answer("A", "standalone")
