"""Subtitle styles (``vlmzip.eval.subtitles``): vlmzip's cues at the model's frames, and lmms-eval 0.7.3's way,
each difference shown on hand-made SRT text.

The expected ``lmms-eval`` texts were checked against lmms-eval 0.7.3's own ``videomme_doc_to_text_subtitle``
(run from its wheel, with OpenCV's frame count and rate stubbed, in a throwaway script outside this repository).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_videomme import SRT, encoded, make_copy  # noqa: F401  (encoded: the fixture make_copy needs)

from vlmzip.errors import InputError
from vlmzip.eval import videomme as vm
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.subtitles import (
    SUBTITLE_STYLES,
    Cue,
    lmms_eval_cues,
    lmms_eval_subtitles,
    parse_srt,
    subtitle_text,
    subtitles_at,
)
from vlmzip.eval.video import Clip, Sampling

FONT = '<font color="white" size=".72c">{}</font>'


def srt(*cues: tuple[float, float, str]) -> str:
    """SRT text of (start, end, text) cues in the order given."""

    def stamp(seconds: float) -> str:
        millis = round(seconds * 1000)
        return f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"

    return "".join(f"{k}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n" for k, (a, b, text) in enumerate(cues, start=1))


NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# ten one-second cues 30 s apart; "two" and "nine" last 14 s, so only they hold one of the 32 sampled frames
TEN = srt(*((30 * k + 1, 30 * k + (15 if k in (2, 9) else 2), FONT.format(name)) for k, name in enumerate(NAMES)))

# (what it shows, SRT text, frames in the video, its frame rate, lmms-eval's subtitle text)
LMMS_CASES = [
    ("set order, not time order", TEN, 3200, 10.0, "nine\ntwo"),
    ("frames rounded down: 0.95 s is frame 9 at 10 fps", srt((0.95, 1.0, FONT.format("late"))), 32, 10.0, "late"),
    ("the first <font> segment only, entities raw", SRT, 30, 10.0, "zero\none\ntwo &amp; a"),
    ("a cue without that <font> tag is left out", srt((0, 2, "plain"), (2, 4, FONT.format("styled"))), 40, 10.0,
     "styled"),
    ("another <font> tag is not that tag", srt((0, 4, '<font color="yellow">y</font>')), 40, 10.0, ""),
    ("a repeated timing keeps its first place, its last text",
     srt((0, 1, FONT.format("a")), (2, 3, FONT.format("b")), (0, 1, FONT.format("c"))), 30, 10.0, "c\nb"),
    ("file order for few cues, even out of time order",
     srt((2, 3, FONT.format("later")), (0, 1, FONT.format("earlier"))), 30, 10.0, "later\nearlier"),
    ("CRLF line ends", SRT.replace("\r\n", "\n").replace("\n", "\r\n"), 30, 10.0, "zero\none\ntwo &amp; a"),
    ("no cue at the sampled frames", srt((0.01, 0.05, FONT.format("flash"))), 32, 10.0, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "n_frames", "fps", "expected"), [c[1:] for c in LMMS_CASES], ids=[c[0] for c in LMMS_CASES]
)
def test_lmms_eval_style(text, n_frames, fps, expected):
    assert lmms_eval_subtitles(lmms_eval_cues(text), n_frames, fps) == expected


def test_the_two_styles_differ_where_documented():
    ten = parse_srt(TEN)
    # vlmzip: time order, at the frames the model sees (here the same 32 frames, as timestamps)
    every = [frame / 10 for frame in np.linspace(0, 3199, 32).astype(int)]
    assert subtitles_at(ten, every) == "two\nnine"
    late = srt((0.95, 1.0, FONT.format("late")))
    assert subtitles_at(parse_srt(late), [i / 10 for i in range(32)]) == ""  # 0.9 s is before it, 1.0 s after
    assert subtitles_at(parse_srt(SRT), [i / 10 for i in range(30)]) == "zero\none\ntwo & a half"
    assert subtitles_at(parse_srt(srt((0, 2, "plain"))), [0.0]) == "plain"


def test_lmms_eval_style_always_reads_32_frames_whatever_the_model_sees(tmp_path):
    path = tmp_path / "v.srt"
    path.write_text(srt((1.0, 1.5, FONT.format("between")), (0.0, 0.2, FONT.format("first"))), encoding="utf-8")
    clip = Clip([], [0, 29], [0.0, 2.9], n_frames=30, fps=10.0)  # the model sees 2 frames
    assert subtitle_text(path, clip, "vlmzip") == "first"
    assert subtitle_text(path, clip, "lmms-eval") == "between\nfirst"  # frames 10-14 are among the 32
    with pytest.raises(InputError, match="unknown subtitles style 'vlc': expected one of vlmzip, lmms-eval"):
        subtitle_text(path, clip, "vlc")
    assert SUBTITLE_STYLES == ("vlmzip", "lmms-eval")


def test_a_timing_lmms_eval_cannot_read_is_an_error_naming_the_other_style():
    assert parse_srt("1\n0:00:01.5 --> 0:00:02.25\nx\n") == [Cue(1.5, 2.25, "x")]  # vlmzip reads it
    with pytest.raises(InputError, match=r"block 1 .* lmms-eval cannot read .*--subtitles-style vlmzip"):
        lmms_eval_cues("1\n0:00:01.5 --> 0:00:02.25\nx\n")
    with pytest.raises(InputError, match="block 2"):  # three newlines: the block starts with an empty line
        lmms_eval_cues(srt((0, 1, "a")) + "\n" + srt((2, 3, "b")))


def test_samples_in_lmms_eval_style(tmp_path, encoded):  # noqa: F811
    data = vm.load(make_copy(tmp_path, encoded))
    sampling = Sampling(frames=4)
    samples = list(vm.iter_samples(data, sampling=sampling, subtitles=True, subtitles_style="lmms-eval"))
    first, long = samples[0], samples[-1]
    assert first.subtitles == "zero\none\ntwo &amp; a" and first.subtitles_style == "lmms-eval"
    assert first.prompt == build_prompt(first.question, "zero\none\ntwo &amp; a")
    assert long.subtitles is None and long.subtitles_style is None  # no subtitle file
    plain = next(vm.iter_samples(data, sampling=sampling))
    assert plain.subtitles is None and plain.subtitles_style is None
    with pytest.raises(InputError, match="unknown subtitles style"):
        next(vm.iter_samples(data, sampling=sampling, subtitles=True, subtitles_style="lmms"))
