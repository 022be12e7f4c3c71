"""`vlmzip report`: the table across runs, the Pareto front, the plot."""

from __future__ import annotations

import pytest
from test_runner import Scripted, samples

from vlmzip.cli import main
from vlmzip.errors import InputError
from vlmzip.eval import report, runner
from vlmzip.eval.synthetic import write_video_set


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    write_video_set(root, n_videos=2, split="test", seed=4, subtitles=False)
    out = tmp_path_factory.mktemp("runs") / "a"
    runner.run(samples(root), Scripted(), ["none", "uniform:keep=0.25"], out, {}, 3)
    return [out]


def test_pareto_front():
    rows = [
        {"accuracy": 0.9, "ttft": 100.0},  # best accuracy
        {"accuracy": 0.5, "ttft": 20.0},  # cheapest
        {"accuracy": 0.4, "ttft": 50.0},  # beaten on both by the row above
        {"accuracy": None, "ttft": 10.0},  # no accuracy: not a candidate
    ]
    assert report.pareto(rows, "ttft") == {0, 1}


def test_report_table_and_plot(runs, tmp_path, capsys):
    rows = report.collect(runs)
    assert [r["policy"] for r in rows] == ["none", "uniform:keep=0.25"]
    assert rows[0]["accuracy"] == 1.0 and rows[1]["retained"] == pytest.approx(2 / 6)
    pytest.importorskip("matplotlib")
    assert main(["report", *map(str, runs), "--out", str(tmp_path), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "| a | none | 100.0% | 100.0% |" in out
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "report.md").exists()


def test_report_rejects_a_directory_that_is_no_run(tmp_path):
    with pytest.raises(InputError, match="is not a vlmzip eval run"):
        report.collect([tmp_path])


def test_runs_scored_differently_need_mixed_scoring(tmp_path, capsys):
    root = tmp_path / "videomme"
    write_video_set(root, n_videos=1, split="test", seed=4, subtitles=False)
    for name, extractor in (("a", "vlmzip"), ("b", "lmms-eval"), ("c", "vlmzip")):
        runner.run(samples(root), Scripted(), ["none"], tmp_path / name, {}, 3, extractor=extractor)
    a, b, c = (str(tmp_path / name) for name in "abc")
    assert main(["report", a, c]) == 0  # scored alike
    assert "| extractor vlmzip |" in capsys.readouterr().out
    assert main(["report", a, b, c]) == 2
    err = capsys.readouterr().err
    assert "these runs were scored differently (answer extractor: vlmzip (a, c) vs lmms-eval (b))" in err
    assert "pass --mixed-scoring to put them in one table anyway" in err
    assert main(["report", a, b, "--mixed-scoring"]) == 0
    out = capsys.readouterr().out
    assert "| extractor vlmzip |" in out and "| extractor lmms-eval |" in out


def test_subtitle_styles_differ_only_among_runs_with_subtitles():
    alike = {"extractor": "vlmzip", "subtitles_style": None}
    report.check_scoring({"plain": alike, "subs": {**alike, "subtitles_style": "lmms-eval"}})  # no subtitles: fine
    with pytest.raises(InputError, match=r"subtitles style: vlmzip \(x\) vs lmms-eval \(y\)"):
        report.check_scoring(
            {"x": {**alike, "subtitles_style": "vlmzip"}, "y": {**alike, "subtitles_style": "lmms-eval"}}
        )
    rows = [
        {"extractor": "vlmzip", "subtitles": True},  # from before styles were recorded: vlmzip's
        {"extractor": "vlmzip", "subtitles": True, "subtitles_style": "vlmzip"},
        {"extractor": "vlmzip", "subtitles": False, "subtitles_style": None},
    ]
    assert runner.scoring(rows) == {"extractor": "vlmzip", "subtitles_style": "vlmzip"}
    assert report.label(runner.scoring(rows)) == "extractor vlmzip, subtitles vlmzip"
