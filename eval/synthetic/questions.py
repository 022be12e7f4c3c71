"""Questions: the four-option multiple-choice form every question family returns, its prompt, and the
helpers that draw distractors for the families (``images``, ``video``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vlmzip.eval.synthetic.scenes import LETTERS, Obj, position_name


@dataclass(frozen=True)
class Question:
    """A four-option multiple-choice question; ``options`` are Video-MME style ("A. red")."""

    family: str
    text: str
    options: tuple[str, ...]
    answer: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def choices(self) -> tuple[str, ...]:
        """The options without their letters."""
        return tuple(o[3:] for o in self.options)

    @property
    def answer_word(self) -> str:
        return self.choices[LETTERS.index(self.answer)]

    def param(self, key: str) -> str:
        return dict(self.params)[key]

    def to_json(self) -> dict:
        return {
            "question": self.text,
            "options": list(self.options),
            "answer": self.answer,
            "answer_word": self.answer_word,
            "family": self.family,
            "params": dict(self.params),
        }


def option_lookup(question: Question) -> Question:
    """``question`` asked by its own answer, "Which option is <answer>?", with the same options and letter: the
    last step of every multiple-choice answer (find the option that says what the model concluded) as a task of
    its own, which needs no image."""
    return replace(question, text=f"Which option is {question.answer_word}?")


def mc_prompt(question: Question, medium: str = "image") -> str:
    """The official Video-MME multiple-choice prompt (without subtitles) for ``medium`` "image" or "video"."""
    return (
        f"Select the best answer to the following multiple-choice question based on the {medium}. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        f"{question.text}\n" + "\n".join(question.options) + "\nThe best answer is:"
    )


def _mc(
    family: str,
    text: str,
    answer: str,
    pools: Sequence[Sequence[str]],
    rng: np.random.Generator,
    params: Sequence[tuple[str, str]] = (),
) -> Question | None:
    """Answer plus three distractors taken from ``pools`` in order (each pool shuffled), then shuffled."""
    picked: list[str] = []
    for pool in pools:
        cands = [c for c in dict.fromkeys(pool) if c != answer and c not in picked]
        for i in rng.permutation(len(cands)):
            if len(picked) == 3:
                break
            picked.append(cands[int(i)])
    if len(picked) < 3:
        return None
    words = [answer, *picked]
    words = [words[int(i)] for i in rng.permutation(4)]
    options = tuple(f"{letter}. {w}" for letter, w in zip(LETTERS, words))
    return Question(family, text, options, LETTERS[words.index(answer)], tuple(params))


def _count_options(answer: int, rng: np.random.Generator) -> list[str]:
    start = max(0, answer - int(rng.integers(0, 4)))
    return [str(start + i) for i in range(4)]


def _pick(items: Sequence, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _unique_by(objs: Sequence[Obj], key: Callable[[Obj], str]) -> list[Obj]:
    counts = Counter(key(o) for o in objs)
    return [o for o in objs if counts[key(o)] == 1]


def _all_positions(grid: int) -> list[str]:
    return [position_name(r, c, grid) for r in range(grid) for c in range(grid)]
