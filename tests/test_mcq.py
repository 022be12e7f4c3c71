"""The generic multiple-choice bench (``vlmzip.eval.mcq``): the JSONL format, its validation, pictures and videos
as samples, missing files as error records, and the by-category breakdown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmzip.errors import InputError
from vlmzip.eval import bundled, mcq, runner, synthetic
from vlmzip.eval.runner import Prediction
from vlmzip.eval.scoring import summarize
from vlmzip.eval.video import Sampling

OPTIONS = ["A. red", "B. blue", "C. green", "D. pink"]


def row(qid="q1", **fields):
    base = {"id": qid, "question": "What colour is the ball?", "options": OPTIONS, "answer": "B", "image": "a.png"}
    return {**base, **fields}


def write(folder, rows, name="set.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    for picture in ("a.png", "b.png"):
        if not (folder / picture).exists():
            Image.new("RGB", (8, 6), (200, 10, 10)).save(folder / picture)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / name


def without(key, **fields):
    return {k: v for k, v in row(**fields).items() if k != key}


BAD = [
    ([row(), row("q2"), row("q1")], "line 3: id 'q1' is already used on line 1: make the ids unique"),
    ([without("answer")], "line 1: no 'answer': give the correct option's letter (A, B, C or D)"),
    ([row(answer="E")], "line 1: answer 'E' is not one of A, B, C, D: give the correct option's letter"),
    ([row(answer=2)], "line 1: answer 2 is not one of A, B, C, D"),
    ([without("id")], "line 1: no 'id' (a non-empty string or integer): give every question a unique id"),
    ([without("question")], "line 1: no 'question' text"),
    ([row(options=OPTIONS[:3])], "line 1: 3 options, expected 4 (A-D)"),
    ([row(options="A. red")], "line 1: 'options' must be a list of four non-empty strings"),
    (
        [row(options=["B. red", "blue", "green", "pink"])],
        "line 1: option A is labelled B ('B. red'): label the options A-D in order, or leave the labels out",
    ),
    ([without("image")], "line 1: no 'image', 'images' or 'video': give exactly one"),
    ([row(video="v.mp4")], "line 1: gives 'image' and 'video': give exactly one of image, images, video"),
    ([without("image", images=[])], "line 1: 'images' must be a non-empty list of paths"),
    ([row(category=["x"])], "line 1: 'category' must be a string, got list"),
    ([row(), "{not json"], "line 2: not valid JSON"),
    ([row(), "[1, 2]"], "line 2: a JSON object is expected, got list"),
    ([], "the file holds no questions"),
]


@pytest.mark.parametrize(("rows", "message"), BAD, ids=[m.split(": ")[-1][:24] for _, m in BAD])
def test_each_bad_line_is_named_with_its_fix(tmp_path, rows, message):
    path = write(tmp_path, rows)
    with pytest.raises(InputError) as caught:
        mcq.load(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_every_problem_is_listed_at_once(tmp_path):
    path = write(tmp_path, [row(answer="Z"), without("question", id="q2"), row("q3")])
    with pytest.raises(InputError, match=r"\(2 problem\(s\)\): line 1: .*; line 2: no 'question'"):
        mcq.load(path)


def test_plain_or_labelled_options_lower_case_answers_categories_and_ids(tmp_path):
    rows = [
        row(1, options=["red", "blue", "green", "pink"], answer="c", family="colour"),
        row("q2", options=["(A) red", "B) blue", "C: green", "D. pink"], category="hue", family="colour"),
        row("q3", image=None, images=["a.png", "b.png"]),
    ]
    data = mcq.load(write(tmp_path, rows))
    first, second, third = (item.question for item in data.items)
    assert first.question_id == "1" and first.options == tuple(OPTIONS) and first.answer == "C"
    assert second.options == tuple(OPTIONS) and second.category == "hue" and first.category == "colour"
    assert third.category == "" and data.items[2].medium == "images" and data.items[2].paths[1] == tmp_path / "b.png"
    assert mcq.load(tmp_path).manifest_sha256 == data.manifest_sha256  # a folder with one .jsonl file
    assert [i.question.question_id for i in mcq.select(data, limit=2)] == ["1", "q2"]


def test_pictures_and_videos_become_samples(tmp_path):
    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :, 1] = np.arange(6)[:, None, None] * 40
    synthetic.encode_mp4(frames, tmp_path / "clip.mp4")
    rows = [
        row("pic"),
        row("pics", image=None, images=["a.png", "b.png"]),
        row("vid", image=None, video="clip.mp4"),
        row("vid2", image=None, video="clip.mp4", question="And now?"),
    ]
    data = mcq.load(write(tmp_path, rows))
    pic, pics, vid, vid2 = mcq.iter_samples(data, sampling=Sampling(frames=3), max_side=4)
    assert pic.medium == "image" and len(pic.frames) == 1 and pic.frames[0].shape == (3, 4, 3)
    assert pic.sampling == "image" and pic.frame_indices == [] and pic.error is None
    assert pics.medium == "images" and len(pics.frames) == 2
    assert vid.medium == "video" and vid.frame_indices == [0, 2, 5] and vid.timestamps == pytest.approx([0, 1, 2.5])
    assert vid.frames[0].shape == (4, 4, 3) and vid.sampling == "frames=3,sampler=linspace"
    assert vid2.frames is vid.frames  # consecutive questions about one video decode it once
    assert pic.prompt.startswith("Select the best answer to the following multiple-choice question based on the image.")
    assert "based on the images." in pics.prompt and "based on the video." in vid.prompt
    assert pic.prompt.endswith("What colour is the ball?\nA. red\nB. blue\nC. green\nD. pink\nThe best answer is:")


class Stand:
    """Answers 'A' under policy 'none' and 'B' otherwise."""

    def __init__(self):
        self.asked = []

    def predict(self, policy, batch):
        self.asked += [s.question.question_id for s in batch]
        return [Prediction("A" if policy == "none" else "B", 1, 1) for _ in batch]


def test_a_missing_file_is_an_error_record_and_the_run_goes_on(tmp_path):
    rows = [row("q1", answer="A"), row("q2", image="gone.png"), row("q3", image=None, images=["a.png", "nope.png"])]
    data = mcq.load(write(tmp_path, rows))
    assert data.partial and len(data.missing) == 2
    predictor = Stand()
    results = runner.run(mcq.iter_samples(data), predictor, ["none"], tmp_path / "run", {}, batch_size=2)
    assert predictor.asked == ["q1"]  # never sent to the model
    errors = {r["question_id"]: r["error"] for r in runner.read_samples(tmp_path / "run") if r["error"]}
    assert errors == {
        "q2": f"line 2: image file {tmp_path / 'gone.png'} not found",
        "q3": f"line 3: image file {tmp_path / 'nope.png'} not found",
    }
    assert results["policies"]["none"]["accuracy"] == 1.0 and results["policies"]["none"]["evaluated"] == 1
    with pytest.raises(InputError, match="gone.png not found; pass missing='record'"):
        list(mcq.iter_samples(data, missing="fail"))
    with pytest.raises(InputError, match="none of the media files named in .* exists"):
        mcq.load(write(tmp_path / "elsewhere", [row(image="x.png")]))


def test_accuracy_is_broken_down_by_category(tmp_path):
    rows = [row(f"q{i}", answer="AB"[i % 2], category="even" if i % 2 == 0 else "odd") for i in range(6)]
    rows.append(row("q6", answer="A"))  # no category
    data = mcq.load(write(tmp_path, rows))
    results = runner.run(mcq.iter_samples(data), Stand(), ["none", "uniform:keep=0.5"], tmp_path / "run", {}, 4)
    none, other = (results["policies"][p]["summary"] for p in ("none", "uniform:keep=0.5"))
    assert list(none["by_category"]) == ["", "even", "odd"]
    assert none["by_category"]["even"]["accuracy"] == 1.0 and none["by_category"]["odd"]["accuracy"] == 0.0
    assert other["by_category"]["odd"]["correct"] == 3 and other["by_category"][""]["total"] == 1
    assert "by_duration" not in none and "by_task_type" not in none  # no Video-MME groupings for these
    table = runner.category_table(results)
    assert "| category | none | uniform:keep=0.5 |" in table and "| even | 100.0% of 3 | 0.0% of 3 |" in table
    assert "| (none) | 100.0% of 1 | 0.0% of 1 |" in table
    video_results = {"policies": {"none": {"summary": summarize([])}}}
    assert runner.category_table(video_results) is None


def test_the_bundled_image_set_loads_unchanged_with_the_training_prompt():
    path = bundled.dataset_path("image") / "test.jsonl"
    data = mcq.load(path)
    records = synthetic.load_image_set(path.parent, "test")
    assert len(data.items) == len(records) and not data.partial
    for item, record in zip(data.items, records, strict=True):
        assert item.question.options == record.question.options and item.question.answer == record.question.answer
        assert item.question.category == record.question.family and item.paths == (record.image,)
    samples = list(mcq.iter_samples(data, mcq.select(data, 5)))
    for sample, record in zip(samples, records, strict=False):
        assert sample.prompt == synthetic.mc_prompt(record.question, "image")
        assert sample.frames[0].shape == (64, 64, 3) and sample.frames[0].dtype == np.uint8
