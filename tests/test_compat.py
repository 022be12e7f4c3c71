"""``vlmzip eval --compat lmms-eval``: the preset's settings, its conflicts, and runs on the bundled videos whose
``results.json`` is what lmms-eval 0.7.3 reports for the same answers (the letters it reads are the literal ones
of ``test_extractors.CORPUS``, written down from lmms-eval itself)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from test_extractors import CORPUS
from test_videomme import encoded, make_copy  # noqa: F401  (encoded: the fixture make_copy needs)

from vlmzip.cli import _parser, main
from vlmzip.errors import InputError
from vlmzip.eval import compat, report, runner, subtitles
from vlmzip.eval.benches import videomme as videomme_bench
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.runner import Prediction
from vlmzip.eval.video import Sampling

SETTINGS = ("template", "frames", "sampler", "fps", "max_frames", "subtitles_style", "extractor", "max_new_tokens")


def planned(*argv: str):
    args = _parser().parse_args(["eval", *argv])
    return args, runner.plan(args)


def test_the_preset_sets_every_setting(tmp_path):
    args, chosen = planned("--compat", "lmms-eval", "--limit", "3", "--out", str(tmp_path))
    assert tuple(getattr(args, s) for s in SETTINGS) == (
        "lmms-eval", 32, "linspace", None, None, "lmms-eval", "lmms-eval", 16,
    )  # fmt: skip
    assert any(note.startswith("compat lmms-eval: --template lmms-eval, --frames 32") for note in chosen.notes)
    args, _ = planned("--limit", "3", "--out", str(tmp_path))  # no preset: vlmzip's defaults
    assert tuple(getattr(args, s) for s in SETTINGS) == ("official", None, "linspace", 2.0, 64, "vlmzip", "vlmzip", 16)


def test_the_preset_s_own_values_may_be_repeated(tmp_path):
    args, _ = planned(
        "--compat", "lmms-eval", "--template", "lmms-eval", "--frames", "32", "--extractor", "lmms-eval",
        "--max-new-tokens", "16", "--out", str(tmp_path),
    )  # fmt: skip
    assert args.extractor == "lmms-eval" and args.frames == 32


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--template", "official"], "--template official (the preset: --template lmms-eval)"),
        (["--extractor", "vlmzip"], "--extractor vlmzip (the preset: --extractor lmms-eval)"),
        (["--frames", "8"], "--frames 8 (the preset: --frames 32)"),
        (["--fps", "1"], "--fps 1.0 (the preset: not given)"),
        (["--max-frames", "4"], "--max-frames 4 (the preset: not given)"),
        (["--sampler", "centered"], "--sampler centered (the preset: --sampler linspace)"),
        (["--max-new-tokens", "2"], "--max-new-tokens 2 (the preset: --max-new-tokens 16)"),
        (["--subtitles", "--subtitles-style", "vlmzip"], "--subtitles-style vlmzip (the preset: --subtitles-style"),
        (["--template", "vlmevalkit", "--frames", "8"], "--template vlmevalkit (the preset: --template lmms-eval); "),
    ],
)
def test_an_option_contradicting_the_preset_is_an_error_naming_both_ways_out(flags, message, capsys):
    assert main(["eval", "--compat", "lmms-eval", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "--compat lmms-eval fixes every setting lmms-eval's score depends on" in err
    assert "drop those options to score as lmms-eval does, or drop --compat and choose each setting yourself" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--subtitles-style", "lmms-eval"], "--subtitles-style lmms-eval only applies to subtitles: add --subtitles"),
        (["--bench", "images", "--compat", "lmms-eval"], "--compat are Video-MME options; --bench images has none"),
        (["--extractor", "regex"], "argument --extractor: invalid choice: 'regex'"),
    ],
)
def test_other_misuses(flags, message, capsys):
    try:
        code = main(["eval", *flags])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


def test_the_parser_s_literal_choices_are_the_modules():
    assert videomme_bench.SUBTITLE_STYLES == subtitles.SUBTITLE_STYLES
    assert tuple(compat.PRESETS) == videomme_bench.COMPAT
    with pytest.raises(InputError, match="unknown --compat 'vlmevalkit': expected one of lmms-eval"):
        compat.apply_preset(argparse.Namespace(compat="vlmevalkit"))


# A response per answer letter that lmms-eval reads right, and one vlmzip reads right but lmms-eval does not;
# the edge cases come first where their letter fits.
READ_RIGHT = {
    letter: [r for r, v, lmms, _ in CORPUS if lmms == letter == v]
    for letter in "ABCD"
}  # fmt: skip
LMMS_WRONG = {letter: [r for r, v, lmms, _ in CORPUS if v == letter != lmms] for letter in "ABCD"}
EDGE = ("Not C, the answer is D.", "A is correct because B is wrong.", "The answer is B. A dog.")
LMMS_LETTER = {r: lmms for r, _, lmms, _ in CORPUS}


class Hand:
    """Answers question k with a hand-made response: one lmms-eval reads right when k is even, one only vlmzip
    reads right when k is odd (so the two extractors' accuracies differ, each known in advance)."""

    def __init__(self):
        self.given: dict[str, str] = {}

    def predict(self, policy, batch):
        out = []
        for sample in batch:
            k, answer = len(self.given), sample.question.answer
            pool = READ_RIGHT[answer] if k % 2 == 0 else LMMS_WRONG[answer]
            edges = [r for r in EDGE if r in pool]
            response = edges[0] if edges else pool[k // 2 % len(pool)]
            self.given[sample.question.question_id] = response
            out.append(Prediction(response))
        return out


def test_the_preset_on_the_bundled_videos_reports_lmms_eval_s_score(tmp_path):
    args, chosen = planned("--compat", "lmms-eval", "--limit", "12", "--out", str(tmp_path / "lmms"))
    sampling = Sampling(args.frames, args.sampler, args.fps, args.max_frames)
    samples = list(chosen.bench.load(args, chosen.data, sampling).samples)
    assert len(samples) == 12
    for sample in samples:
        assert sample.prompt == build_prompt(sample.question, None, "lmms-eval") and sample.template == "lmms-eval"
        assert sample.sampling == "frames=32,sampler=linspace" and len(sample.frame_indices) == 32
        last = max(sample.frame_indices)
        assert sample.frame_indices == np.linspace(0, last, 32).astype(int).tolist()
    hand = Hand()
    results = runner.run(samples, hand, ["none"], args.out, {}, 4, extractor=args.extractor)
    # lmms-eval: score = 100 * (pred_answer == answer) / answered, its letters written down in CORPUS
    answers = {s.question.question_id: s.question.answer for s in samples}
    lmms_correct = sum(LMMS_LETTER[hand.given[q]] == answer for q, answer in answers.items())
    assert 0 < lmms_correct < 12 and set(EDGE) & set(hand.given.values())
    none = results["policies"]["none"]
    assert 100 * none["accuracy"] == pytest.approx(100 * lmms_correct / 12)
    assert results["scoring"] == {"extractor": "lmms-eval", "subtitles_style": None}
    rows = runner.read_samples(args.out)
    assert [r["prediction"] for r in rows] == [LMMS_LETTER[hand.given[r["question_id"]]] for r in rows]
    # the same answers read by vlmzip's extractor: all right, a different accuracy; report keeps them apart
    again = runner.run(samples, Hand(), ["none"], tmp_path / "vlmzip", {}, 4)
    assert again["policies"]["none"]["accuracy"] == 1.0
    with pytest.raises(InputError, match=r"answer extractor: lmms-eval \(lmms\) vs vlmzip \(vlmzip\)"):
        report.collect([args.out, tmp_path / "vlmzip"])
    rows = report.collect([args.out, tmp_path / "vlmzip"], mixed_scoring=True)
    assert [r["scoring"] for r in rows] == ["extractor lmms-eval", "extractor vlmzip"]


def test_the_preset_with_subtitles_on_a_video_mme_copy(tmp_path, encoded):  # noqa: F811
    root = make_copy(tmp_path / "copy", encoded)
    args, chosen = planned(
        "--data-root", str(root), "--model", "qwen2_5_vl", "--compat", "lmms-eval", "--subtitles",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    samples = list(chosen.bench.load(args, chosen.data, Sampling(args.frames, args.sampler)).samples)
    first, long = samples[0], samples[-1]
    assert first.subtitles == "zero\none\ntwo &amp; a" and first.subtitles_style == "lmms-eval"
    assert first.prompt == build_prompt(first.question, "zero\none\ntwo &amp; a", "lmms-eval")
    assert long.subtitles == "No subtitles available"  # lmms-eval's text for a video without a subtitle file


def test_a_compat_run_end_to_end_records_its_scoring(tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "--compat", "lmms-eval", "--policy", "none", "--limit", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("compat", "extractor", "subtitles_style", "template", "sampling")} == {
        "compat": "lmms-eval", "extractor": "lmms-eval", "subtitles_style": "lmms-eval", "template": "lmms-eval",
        "sampling": "frames=32,sampler=linspace",
    }  # fmt: skip
    assert config["max_new_tokens"] == "16"
    (row,) = runner.read_samples(out)
    assert row["extractor"] == "lmms-eval" and len(row["frame_indices"]) == 32 and row["template"] == "lmms-eval"
    assert json.loads((out / "results.json").read_text())["scoring"]["extractor"] == "lmms-eval"
