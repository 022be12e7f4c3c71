"""Prompt templates: a question (and optionally subtitle text) as the text a model is asked.

``official`` is the Video-MME authors' README text; ``lmms-eval`` and ``vlmevalkit`` reproduce those harnesses'
texts (see :data:`TEMPLATES` for the exact sources). Every bench uses them: a question about pictures gets the
same texts with "the video" replaced by "the image" / "the images" (``medium``). In subtitle runs every template
gets the same subtitle text; ``Template.no_subtitle_file`` is what a video without a subtitle file gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vlmzip.errors import InputError
from vlmzip.eval.questions import Question

__all__ = ["MEDIA", "TEMPLATES", "Template", "build_prompt", "get_template"]


@dataclass(frozen=True)
class Template:
    """A named prompt format. ``render(question, subtitles, medium)`` builds the text (``subtitles=None``: the
    prompt without subtitles). ``medium`` is what the question is about: ``"video"`` (Video-MME's texts),
    ``"image"`` or ``"images"`` (the same texts with "the video" in the instruction replaced, and VLMEvalKit's
    "These are the frames of a video." left out). ``no_subtitle_file`` is what subtitle runs pass for a video
    that has no subtitle file (``None``: that video gets the prompt without subtitles)."""

    name: str
    source: str
    render: Callable[[Question, str | None, str], str] = field(repr=False)
    no_subtitle_file: str | None = None


MEDIA = ("video", "image", "images")


def _instruction(medium: str, subtitles: bool = False) -> str:
    source = f"the {medium} and the subtitles" if subtitles else f"the {medium}"
    return (
        f"Select the best answer to the following multiple-choice question based on {source}. "
        "Respond with only the letter (A, B, C, or D) of the correct option."
    )


def _options(question: Question) -> str:
    return "\n".join(question.options)


def _official(question: Question, subtitles: str | None, medium: str = "video") -> str:
    body = f"{_instruction(medium)}\n{question.question}\n{_options(question)}\nThe best answer is:"
    return body if subtitles is None else f"This video's subtitles are listed below:\n{subtitles}\n{body}"


def _lmms_eval(question: Question, subtitles: str | None, medium: str = "video") -> str:
    qa = f"{_instruction(medium, subtitles=True)}\n{question.question}\n{_options(question)}\n"
    if subtitles is None:
        return qa + "\nAnswer with the option's letter from the given choices directly."
    return f"This video's subtitles are listed below: \n{subtitles}\n{qa}The best answer is:"


def _vlmevalkit(question: Question, subtitles: str | None, medium: str = "video") -> str:
    frames = "These are the frames of a video. " if medium == "video" else ""
    if subtitles is not None:
        frames += f"This video's subtitles are listed below:\n{subtitles}\n"
    return f"{frames}{_instruction(medium)}\nQuestion: {question.question}\n{_options(question)}\nAnswer: "


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("official", "Video-MME authors' README (github.com/BradyFU/Video-MME)", _official, None),
        Template(
            "lmms-eval",
            "lmms-eval tasks/videomme/utils.py at 75571cf (2026-08), default model kwargs: videomme_doc_to_text "
            "with post_prompt '\\nAnswer with the option's letter from the given choices directly.' (its "
            "instruction mentions subtitles even without them); videomme_doc_to_text_subtitle with subtitles",
            _lmms_eval,
            "No subtitles available",
        ),
        Template(
            "vlmevalkit",
            "VLMEvalKit vlmeval/dataset/videomme.py at e8e78f0 (2026-08): FRAMES_TMPL_NOSUB/SUB without the "
            "leading newline, then 'Question: {question}\\n{options}\\nAnswer: ', the two messages joined with "
            "nothing between them",
            _vlmevalkit,
            "",
        ),
    )
}


def build_prompt(
    question: Question, subtitles: str | None = None, template: str = "official", medium: str = "video"
) -> str:
    """The question's prompt text in the named template; ``subtitles`` (cue text, possibly ``""``) selects the
    subtitle variant, ``None`` the one without subtitles; ``medium`` is one of :data:`MEDIA`."""
    if medium not in MEDIA:
        raise InputError(f"unknown medium {medium!r}: expected one of {', '.join(MEDIA)}")
    return get_template(template).render(question, subtitles, medium)


def get_template(name: str) -> Template:
    """The template called ``name``; :class:`InputError` listing the known ones otherwise."""
    if name not in TEMPLATES:
        raise InputError(f"unknown prompt template {name!r}: expected one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
