"""`vlmzip eval`'s model-backed predictor and command, end to end on an untrained fixture (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from vlmzip.cli import main
from vlmzip.eval import fixtures, runner, videomme
from vlmzip.eval.predictor import ModelPredictor
from vlmzip.eval.questions import Question
from vlmzip.eval.samples import Sample
from vlmzip.eval.synthetic import write_video_set
from vlmzip.eval.video import Sampling


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    write_video_set(root, n_videos=2, split="test", seed=5, subtitles=False)
    return root


@pytest.mark.parametrize("fixture_family", ["llava", "gemma3"])
def test_predictor_answers_frames_as_images_and_reports_what_was_kept(fixture_family, videos):
    model, processor = fixtures.build(fixture_family)
    data = videomme.load(videos)
    samples = list(videomme.iter_samples(data, sampling=Sampling(frames=2)))[:2]
    predictor = ModelPredictor(model.eval(), processor, max_new_tokens=3)
    per_image = fixtures.visual_tokens(fixture_family, fixtures.SPECS[fixture_family])
    for policy, kept in (("none", 2 * per_image), ("uniform:keep=0.25", 2 * per_image // 4)):
        predictions = predictor.predict(policy, samples)
        assert [p.visual_tokens_in for p in predictions] == [2 * per_image] * 2  # two frames, one image each
        assert [p.visual_tokens_kept for p in predictions] == [kept] * 2
        assert all(isinstance(p.response, str) for p in predictions)
        assert predictions[0].prefill_ms > 0 and predictions[0].first_token_ms >= predictions[0].prefill_ms


def test_eval_command_runs_and_resumes(videos, tmp_path):
    model, processor = fixtures.build("llava")
    checkpoint = fixtures.save(model, processor, tmp_path / "model", fixtures.SPECS["llava"], dtype=torch.float32)
    out = tmp_path / "run"
    args = [
        "eval",
        "--data-root",
        str(videos),
        "--model",
        str(checkpoint),
        "--frames",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--policy",
        "uniform:keep=0.5",
    ]
    assert main(args) == 0
    rows = runner.read_samples(out)
    assert len(rows) == 2 * 6 and {r["policy"] for r in rows} == {"none", "uniform:keep=0.5"}
    assert all(r["error"] is None and r["response"] is not None for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["manifest_sha256"] == videomme.load(videos).manifest_sha256 and config["sampling"].startswith(
        "frames=2"
    )
    assert main([*args, "--resume"]) == 0  # nothing left to do: no sample repeated
    assert len(runner.read_samples(out)) == 2 * 6


def test_videos_at_different_frame_rates_go_to_a_video_processor_separately():
    """A video processor takes one frame rate a call and Qwen's temporal positions follow it."""
    from types import SimpleNamespace

    predictor = ModelPredictor(None, SimpleNamespace(video_processor=object(), tokenizer=SimpleNamespace()))
    question = Question("1-1", "1", "v", "short", "d", "s", "t", "q?", ("A. a", "B. b", "C. c", "D. d"), "A")

    def sample(timestamps, medium="video"):
        return Sample(question, "p", "official", "-", timestamps=timestamps, medium=medium)

    kinds = [predictor._kind(s) for s in (sample([0, 1, 2]), sample([0, 0.5, 1]), sample([3, 4]), sample([], "image"))]
    assert kinds == [(True, 1.0), (True, 2.0), (True, 1.0), (False, None)]
