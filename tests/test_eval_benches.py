"""`vlmzip eval`'s bundled benches on the shipped fixtures (CPU): the image set through the mcq bench, the
no-argument default (Qwen2.5-VL on the bundled videos), what is asked for when a half is missing, and Qwen video
input without torchvision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmzip.cli import main
from vlmzip.eval import benches, bundled, fixtures, mcq, runner, videomme
from vlmzip.eval.predictor import ModelPredictor, load
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.samples import Sample


def test_bundled_image_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--bench", "images", "--model", "gemma3", "--limit", "4", "--batch-size", "4", "--out", str(out)]
    assert main([*args, "--policy", "uniform:keep=0.25", "--max-new-tokens", "2"]) == 0
    rows = runner.read_samples(out)
    assert len(rows) == 2 * 4 and {r["policy"] for r in rows} == {"none", "uniform:keep=0.25"}
    assert all(r["error"] is None and r["response"] is not None for r in rows)
    assert {r["visual_tokens_in"] for r in rows} == {256} and {r["visual_tokens_kept"] for r in rows} == {256, 64}
    expected = [item.question for item in mcq.select(mcq.load(bundled.dataset_path("image")), 4)]
    assert [r["category"] for r in rows[:4]] == [q.category for q in expected] and all(q.category for q in expected)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(bundled.model_path("gemma3")) and config["layout"] == "mcq-jsonl"
    assert config["dtype"] == "float32" and config["questions"] == 4
    assert config["versions"]["torch"] == torch.__version__ and config["versions"]["device"] == "cpu"
    printed = capsys.readouterr().out
    assert "| uniform:keep=0.25 |" in printed and "| category | none | uniform:keep=0.25 |" in printed
    # Gemma-3 fixture: 2 KV heads x 64 dims, fp32 keys and values; 192 fewer visual tokens in each of its 4 layers
    # (its sliding window, 512, holds the whole prompt)
    per_entry = 2 * 2 * 64 * 4
    for none, pruned in zip(rows[:4], rows[4:]):
        assert none["kv_bytes"] % per_entry == 0 and pruned["kv_bytes"] % per_entry == 0
        assert none["kv_bytes"] - pruned["kv_bytes"] == 4 * (256 - 64) * per_entry


def _qwen_tokens() -> int:
    """Visual tokens the shipped Qwen2.5-VL fixture gives an image, or two frames: its patch grid merged."""
    return fixtures.visual_tokens("qwen2_5_vl", fixtures.saved_spec(bundled.model_path("qwen2_5_vl")))


def test_no_arguments_run_the_bundled_qwen_on_the_bundled_videos(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--limit", "1", "--max-frames", "4", "--max-new-tokens", "2", "--out", str(out)]) == 0
    rows = runner.read_samples(out)
    assert [r["policy"] for r in rows] == list(benches.bench_class("videos").default_policies)
    assert all(r["error"] is None and len(r["frame_indices"]) == 4 for r in rows)
    clip = 2 * _qwen_tokens()  # 4 frames as one video: 2 temporal patches
    assert [r["visual_tokens_in"] for r in rows] == [clip] * 3
    assert [r["visual_tokens_kept"] for r in rows] == [clip, clip // 4, clip // 4]
    config = json.loads((out / "config.json").read_text())
    assert config["bench"] == "videos" and config["model"] == str(bundled.model_path("qwen2_5_vl"))
    assert config["device"] == "cpu" and config["sampling"] == "fps=2,max_frames=4"
    assert config["data_root"] == str(bundled.dataset_path("video"))
    printed = capsys.readouterr().out
    assert "no --model or data given: the bundled Qwen2.5-VL fixture" in printed
    assert "policies: none, random:keep=0.25, vtc-cls:keep=0.25" in printed and "| vtc-cls:keep=0.25 |" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "llava"], "--model needs questions: --data-root DIR (Video-MME), --data FILE.jsonl"),
        (["--data", "x.jsonl"], "--bench mcq needs --model"),
        (["--data-root", "somewhere"], "--bench videomme needs --model"),
        (["--bench", "mcq", "--model", "llava"], "--bench mcq needs --data FILE.jsonl"),
        (["--bench", "images", "--data", "x.jsonl"], "--bench images runs the bundled image test set: drop --data"),
        (["--bench", "videos", "--model", "llava-7b"], "--model llava-7b: no such directory, and not a bundled"),
        (["--data", "a.jsonl", "--data-root", "b"], "give --data-root (a Video-MME copy) or --data"),
        (["--bench", "images", "--subtitles"], "--subtitles, --duration, --subtitles-style and --compat are Video-MME"),
        (["--bench", "images", "--resume"], "--resume continues the run in --out"),
    ],
)
def test_a_missing_half_is_named(args, message, capsys):
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def qwen():
    model, processor = load(bundled.model_path("qwen2_5_vl"), torch.float32, "cpu")
    return ModelPredictor(model, processor, max_new_tokens=2)


def video_sample(frames: int, side: int = 64, medium: str = "video") -> Sample:
    data = videomme.load(bundled.dataset_path("video"))
    question = data.questions[0]
    pixels = np.random.default_rng(0).integers(0, 255, (frames, side, side, 3), dtype=np.uint8)
    prompt = build_prompt(question, medium=medium)
    return Sample(question, prompt, "official", "-", list(pixels), medium=medium)


def test_qwen_gets_video_tokens_without_a_video_processor(qwen):
    processor = qwen.processor
    tokens = processor.tokenizer
    video, image = tokens.convert_tokens_to_ids("<|video_pad|>"), tokens.convert_tokens_to_ids("<|image_pad|>")
    sample = video_sample(4, side=48)  # frames of another size are resized to the fixture's side
    ids = qwen._inputs([sample], as_video=True)["input_ids"]
    per_image = _qwen_tokens()
    assert (ids == video).sum() == 2 * per_image and not (ids == image).any()
    assert qwen.as_video and (processor.video_processor is not None or qwen.patchifies_videos)
    mixed = video_sample(2)
    mixed.frames[1] = mixed.frames[1][:40, :56]  # frames of different sizes in one clip: each resized alone
    picture = video_sample(1, medium="image")
    batch = [sample, picture, video_sample(6), mixed]  # videos and a picture: one generate each, answers in order
    predictions = qwen.predict("none", batch)
    assert [p.visual_tokens_in for p in predictions] == [2 * per_image, per_image, 3 * per_image, per_image]
    assert all(isinstance(p.response, str) for p in predictions)
