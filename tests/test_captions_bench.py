"""`vlmzip eval --bench captions`: fresh test-split scenes described by a shipped fixture (CPU), scored, resumed
and reported; its samples (pictures and Qwen clips); its generation budget; what it refuses."""

from __future__ import annotations

import json

import pytest

from vlmzip.cli import main
from vlmzip.errors import InputError
from vlmzip.eval import bundled, caption_samples, report, runner, synthetic
from vlmzip.eval.benches import bench_class
from vlmzip.eval.captions import parse
from vlmzip.eval.tokenizer import build_tokenizer


def test_the_bench_describes_scores_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--bench", "captions", "--model", "gemma3", "--scenes", "3", "--seed", "2", "--batch-size", "3"]
    assert main([*args, "--out", str(out)]) == 0
    rows = runner.read_samples(out)
    drawn = caption_samples.draw(3, 0, seed=2)
    assert [r["question_id"] for r in rows] == [item.id for item in drawn] == [f"image-0000{i}" for i in range(3)]
    assert [r["reference"] for r in rows] == [synthetic.caption(item.content)[1] for item in drawn]
    assert all(r["prompt"] == "Describe the image." and r["error"] is None for r in rows)
    for row in rows:  # the shipped Gemma-3 fixture describes these scenes without a mistake
        assert parse(row["response"]) == parse(row["reference"]) and row["f1"] == 1.0
    results = json.loads((out / "results.json").read_text())
    none = results["policies"]["none"]
    assert results["metric"] == "f1" and none["f1"] == 1.0 and none["retained"] == 1.0 and none["evaluated"] == 3
    assert none["summary"]["by_medium"]["image"]["attributes"]["position"] == 1.0
    config = json.loads((out / "config.json").read_text())
    assert (config["bench"], config["scenes"], config["seed"], config["max_new_tokens"]) == ("captions", "3", "2", "32")
    printed = capsys.readouterr().out
    assert "| policy | f1 | 95% CI |" in printed and "| none | image | 100.0% | 100.0% |" in printed
    assert main([*args, "--out", str(out), "--resume"]) == 0  # every (policy, scene) is there: nothing is asked again
    assert len(runner.read_samples(out)) == 3
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "| run | policy | f1 | retained |" in capsys.readouterr().out


def test_a_report_refuses_to_mix_f1_with_accuracy():
    scoring = {"extractor": "vlmzip", "subtitles_style": None}
    with pytest.raises(InputError, match=r"scored differently \(metric: f1 \(a\) vs accuracy \(b\)"):
        report.check_scoring({"a": {**scoring, "metric": "f1"}, "b": {**scoring, "metric": "accuracy"}})
    assert report.label({**scoring, "metric": "f1", "extractor": "captions"}) == "f1, extractor captions"


def test_samples_are_test_split_pictures_and_whole_clips():
    items = caption_samples.draw(2, 2, seed=5)
    assert [item.medium for item in items] == ["image", "image", "video", "video"]
    assert all(synthetic.content_split(item.content) == "test" for item in items)
    assert caption_samples.draw(2, 2, seed=5) == items and caption_samples.draw(2, 2, seed=6) != items
    picture, _, clip, _ = caption_samples.samples(items, chunk=1)
    assert picture.frames[0].shape == (64, 64, 3) and picture.medium == "image"
    assert picture.reference == parse(picture.caption)
    frames = items[2].content.n_frames
    assert clip.prompt == "Describe the video." and clip.medium == "video" and len(clip.frames) == frames
    assert clip.timestamps == [i / bundled.VIDEO_FPS for i in range(frames)]
    assert clip.caption == synthetic.video_caption(items[2].content)[1] and clip.reference.events


def test_a_clip_is_scored_by_its_objects_and_events():
    (clip,) = caption_samples.samples(caption_samples.draw(0, 1, seed=5))
    bench = bench_class("captions")()
    first, *events = clip.caption.split(". ")
    row = bench.score(clip, first + ".", "vlmzip")  # the first frame right, no event told
    assert row["medium"] == "video" and row["frames"] == len(clip.frames) and row["precision"] == 1.0
    assert row["events"]["matched"] == 0 and row["events"]["reference"] == len(events)
    assert bench.score(clip, None, "vlmzip")["error"] == "no response"


def _longest(captions: list[str]) -> int:
    """Tokens of the longest description, with the EOS the fixtures end it with."""
    tokenizer = build_tokenizer("qwen2_5_vl")
    return max(len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for text in captions)


def test_the_generation_budget_is_above_the_longest_reference():
    rng = synthetic.split_rng(9, "image", "test")
    scenes = [synthetic.sample_scene(rng, bundled.IMAGE_DIFFICULTY) for _ in range(500)]
    assert _longest([synthetic.caption(scene)[1] for scene in scenes]) <= 25 < caption_samples.IMAGE_MAX_NEW_TOKENS
    rng = synthetic.split_rng(9, "video", "test")
    clips = [synthetic.sample_timeline(rng, bundled.VIDEO_DIFFICULTY) for _ in range(500)]
    assert _longest([synthetic.video_caption(clip)[1] for clip in clips]) <= 111 < caption_samples.VIDEO_MAX_NEW_TOKENS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "llava", "--clips", "2"], "--clips needs a model that takes videos"),
        (["--frames", "8"], "--bench captions takes no --frames (clips are shown whole"),
        (["--limit", "8"], "takes no --limit (--scenes N / --clips N count the samples)"),
        (["--scenes", "0"], "needs something to describe: got --scenes 0 --clips 0"),
        (["--data", "x.jsonl"], "--bench captions runs descriptions of generated test scenes: drop --data-root/"),
        (["--subtitles"], "--subtitles, --duration, --subtitles-style and --compat are Video-MME options"),
    ],
)
def test_bad_options_are_named(args, message, capsys):
    assert main(["eval", "--bench", "captions", *args]) == 2
    assert message in capsys.readouterr().err
