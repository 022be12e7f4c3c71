"""Video-MME data side: tiny copies of every layout built here (no network), decoded, prompted and scored."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import zipfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vlmzip.errors import InputError
from vlmzip.eval import video as decoding
from vlmzip.eval import videomme as vm
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.questions import Question
from vlmzip.eval.samples import Sample
from vlmzip.eval.scoring import extract_answer, score, summarize, wilson_interval
from vlmzip.eval.subtitles import Cue, parse_srt, subtitles_at
from vlmzip.eval.video import Sampling, decode, read_clip, sample_frames

av = pytest.importorskip("av")

N_FRAMES, FPS, SIDE = 30, 10, 32
# (video_id, videoID = file stem, duration, domain, sub_category)
VIDEOS = [
    ("001", "yt_short_01", "short", "Knowledge", "Humanity & History"),
    ("002", "yt_short_02", "short", "Sports Competition", "Football"),
    ("003", "yt_medium_1", "medium", "Life Record", "Food"),
    ("004", "yt_long_001", "long", "Multilingual", "Multilingual"),
]
TASKS = ("Counting Problem", "OCR Problems", "Action Reasoning")
SRT = (
    "\ufeff1\r\n00:00:00,000 --> 00:00:00,500\r\n"
    '<font color="white" size=".72c">zero</font>\r\n\r\n'
    "2\r\n00:00:01,000 --> 00:00:01,500\r\n"
    '<font color="white" size=".72c">one</font>\r\n\r\n'
    "3\r\n00:00:02,000 --> 00:00:02,950\r\n"
    '<font color="white" size=".72c">two &amp; a</font>\r\n'
    '<font color="white" size=".72c">half</font>\r\n'
)


def hf_rows() -> list[dict]:
    rows = []
    for video_id, stem, duration, domain, sub in VIDEOS:
        for k in (1, 2, 3):
            rows.append(
                {
                    "video_id": video_id,
                    "duration": duration,
                    "domain": domain,
                    "sub_category": sub,
                    "url": f"https://www.youtube.com/watch?v={stem}",
                    "videoID": stem,
                    "question_id": f"{video_id}-{k}",
                    "task_type": TASKS[k - 1],
                    "question": f"Question {k} about video {video_id}?",
                    "options": [f"{letter}. option {letter.lower()} of {video_id}-{k}" for letter in "ABCD"],
                    "answer": "ABCD"[(int(video_id) + k) % 4],
                }
            )
    return rows


def encode(path: Path, n: int = N_FRAMES, fps: int = FPS, *, gray=lambda i: i * 8, pts=None) -> None:
    """Frame i is uniform gray i * 8, so a decoded frame tells its own index; ``pts`` (in 1/fps) makes gaps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 5  # several keyframes: seeking is exercised
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((SIDE, SIDE, 3), gray(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = (i if pts is None else pts[i]), Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("encoded")
    out = {}
    for ext in (".mp4", ".mkv"):
        encode(folder / f"ramp{ext}")
        out[ext] = folder / f"ramp{ext}"
    return out


def frame_index(frame: np.ndarray) -> int:
    assert frame.shape[2] == 3 and frame.dtype == np.uint8
    return round(float(frame.mean()) / 8)


def make_copy(
    root: Path,
    encoded: dict[str, Path],
    layout: str = "huggingface",
    *,
    zipped: bool = False,
    skip: tuple[str, ...] = (),
    corrupt: tuple[str, ...] = (),
    ext: str = ".mp4",
    rows: list[dict] | None = None,
) -> Path:
    rows = hf_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    folder = {"huggingface": "data", "vlmevalkit": "video", "authors-json": "videos"}[layout]
    stems = [stem for _, stem, *_ in VIDEOS]
    videos = {}
    for stem in stems:
        if stem in skip:
            continue
        suffix = ".MP4" if (layout == "vlmevalkit" and stem == stems[1]) else ext  # one upper-case extension
        videos[f"{stem}{suffix}"] = b"not a video" if stem in corrupt else encoded[suffix.lower()].read_bytes()
    srts = {f"{stem}.srt": SRT for stem in stems[:3]}  # the long video has no subtitles
    if zipped:
        with zipfile.ZipFile(root / "videos_chunked_01.zip", "w") as archive:
            for name, data in videos.items():
                archive.writestr(f"data/{name}", data)
        with zipfile.ZipFile(root / "subtitle.zip", "w") as archive:
            for name, text in srts.items():
                archive.writestr(f"subtitle/{name}", text.encode("utf-8"))
    else:
        (root / folder).mkdir(exist_ok=True)
        (root / "subtitle").mkdir(exist_ok=True)
        for name, data in videos.items():
            (root / folder / name).write_bytes(data)
        for name, text in srts.items():
            (root / "subtitle" / name).write_bytes(text.encode("utf-8"))
    if layout == "huggingface":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (root / "videomme").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / vm.PARQUET)
    elif layout == "vlmevalkit":
        columns = ["index", "video", "video_path", "duration", "domain", "candidates", "sub_category", "task_type"]
        columns += ["subtitle_path", "question", "answer"]
        with open(root / vm.TSV, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(columns)
            for index, r in enumerate(rows):
                writer.writerow(
                    [index, r["videoID"], f"./video/{r['videoID']}.mp4", r["duration"], r["domain"]]
                    + [str(list(r["options"])), r["sub_category"], r["task_type"]]
                    + [f"./subtitle/{r['videoID']}.srt", r["question"], r["answer"]]
                )
    else:
        per_video: dict[str, dict] = {}
        for r in rows:
            video = per_video.setdefault(
                r["video_id"],
                {
                    "video_id": r["video_id"],
                    "duration_category": r["duration"],
                    "video_category": r["domain"],
                    "video_subcategory": r["sub_category"],
                    "url": r["url"],
                    "questions": [],
                },
            )
            video["questions"].append(
                {k: r[k] for k in ("question_id", "task_type", "question", "answer")} | {"choices": r["options"]}
            )
        (root / "videomme_annotations.json").write_text(json.dumps(list(per_video.values()), indent=1))
    return root


LAYOUTS = [("huggingface", False), ("huggingface", True), ("vlmevalkit", False), ("authors-json", False)]


# ---------------------------------------------------------------------------------------------------------------
# Discovery and validation


@pytest.mark.parametrize(("layout", "zipped"), LAYOUTS)
def test_every_layout_is_found_and_read_the_same(tmp_path, encoded, layout, zipped):
    root = make_copy(tmp_path / "copy", encoded, layout, zipped=zipped)
    data = vm.load(root)
    assert data.layout == layout and not data.partial and data.missing_videos == ()
    assert len(data.questions) == 12 and set(data.videos) == {stem for _, stem, *_ in VIDEOS}
    assert set(data.subtitles) == {stem for _, stem, *_ in VIDEOS[:3]}
    first = data.questions[0]
    assert first == Question(
        question_id="001-1",
        video_id="001",
        video_file_stem="yt_short_01",
        duration="short",
        domain="Knowledge",
        sub_category="Humanity & History",
        task_type="Counting Problem",
        question="Question 1 about video 001?",
        options=("A. option a of 001-1", "B. option b of 001-1", "C. option c of 001-1", "D. option d of 001-1"),
        answer="C",
    )
    # the same questions hash the same whatever the layout (TSV ids are derived from its index)
    reference = vm.load(make_copy(tmp_path / "reference", encoded))
    assert data.manifest_sha256 == reference.manifest_sha256
    assert data.summary()["videos_found"] == 4 and data.summary()["subtitles_found"] == 3
    if zipped:
        assert all(ref.member and ref.member.startswith("data/") for ref in data.videos.values())
    # the annotation file itself may be given instead of the folder
    assert vm.load(data.annotation).questions == data.questions


def test_vlmevalkit_copy_reads_upper_case_extension(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded, "vlmevalkit"))
    assert data.videos["yt_short_02"].path.name == "yt_short_02.MP4"
    assert data.notes and "index" in data.notes[0]


def test_authors_json_without_youtube_ids_uses_video_numbers(tmp_path, encoded):
    root = make_copy(tmp_path, encoded, "authors-json")
    videos = json.loads((root / "videomme_annotations.json").read_text())
    for video in videos:
        del video["url"]
        stem = dict((v[0], v[1]) for v in VIDEOS)[video["video_id"]]
        (root / "videos" / f"{stem}.mp4").rename(root / "videos" / f"{video['video_id']}.mp4")
    (root / "videomme_annotations.json").write_text(json.dumps(videos))
    data = vm.load(root)
    assert data.questions[0].video_file_stem == "001" and not data.partial


def test_mkv_videos_are_found_and_counted(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded, ext=".mkv"))
    assert data.videos["yt_short_01"].path.suffix == ".mkv"
    clip = read_clip(data.videos["yt_short_01"], Sampling(frames=4))
    assert clip.n_frames == N_FRAMES and [frame_index(f) for f in clip.frames] == [0, 9, 19, 29]


def test_no_copy_found(tmp_path):
    with pytest.raises(InputError, match=r"no Video-MME copy found under .*expected one of videomme/test-0000"):
        vm.load(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        vm.load(tmp_path / "nowhere")


def test_damaged_annotation_file(tmp_path, encoded):
    root = make_copy(tmp_path, encoded)
    (root / vm.PARQUET).write_bytes((root / vm.PARQUET).read_bytes()[:100])
    with pytest.raises(InputError, match=r"cannot read the Video-MME annotations .*test-00000-of-00001.parquet.*again"):
        vm.load(root)


def test_questions_without_videos(tmp_path, encoded):
    root = make_copy(tmp_path, encoded, skip=tuple(stem for _, stem, *_ in VIDEOS))
    with pytest.raises(InputError, match=r"none of their 4 videos .*videos_chunked_\*\.zip.*require_videos=False"):
        vm.load(root)
    data = vm.load(root, require_videos=False)
    assert data.partial and len(data.missing_videos) == 4


def test_validation_errors_name_every_problem(tmp_path, encoded):
    rows = hf_rows()
    rows[3]["question_id"] = rows[0]["question_id"]  # duplicate id
    rows[4]["answer"] = "E"
    rows[5]["options"] = rows[5]["options"][:3]
    rows[6]["duration"] = "tiny"
    rows[7]["options"] = [rows[7]["options"][1], *rows[7]["options"][1:]]  # "B. ..." in slot A
    root = make_copy(tmp_path, encoded, rows=rows)
    with pytest.raises(InputError) as caught:
        vm.load(root)
    message = str(caught.value)
    assert "invalid Video-MME annotations" in message and "(5 problem(s))" in message
    assert "question id '001-1' appears 2 times" in message
    assert "question 002-2: answer 'E' is not one of A-D" in message
    assert "question 002-3: 3 options, expected 4" in message
    assert "duration 'tiny'" in message and "option A is labelled B" in message


def test_options_without_letters_are_prefixed(tmp_path, encoded):
    rows = hf_rows()
    rows[0]["options"] = ["red", "green", "(C) blue", "D.yellow"]
    data = vm.load(make_copy(tmp_path, encoded, rows=rows))
    assert data.questions[0].options == ("A. red", "B. green", "C. blue", "D. yellow")


# ---------------------------------------------------------------------------------------------------------------
# Sampling and decoding


def test_sampling_indices():
    assert sample_frames(30, frames=4) == [0, 9, 19, 29]  # np.linspace(0, 29, 4).astype(int)
    assert sample_frames(30, frames=4, sampler="centered") == [6, 12, 18, 24]  # int(i * 30 / 5)
    assert sample_frames(100, frames=7, sampler="centered") == [12, 25, 37, 50, 62, 75, 87]
    assert sample_frames(3, frames=5) == [0, 0, 1, 1, 2]  # repeats, as lmms-eval does
    assert sample_frames(30, 10.0, fps=2) == [0, 5, 10, 15, 20, 25]  # 3 s at 2 fps
    assert sample_frames(30, 10.0, fps=2, max_frames=3) == [0, 10, 25]  # linspace over those six
    assert sample_frames(2, 10.0, fps=1) == [0]  # shorter than one period: still one frame
    assert sample_frames(30, frames=8, max_frames=2) == [0, 29]
    assert Sampling().frames == 32 and Sampling(fps=1, max_frames=64).describe() == "fps=1,max_frames=64"
    with pytest.raises(InputError, match="give frames or fps, not both"):
        Sampling(frames=8, fps=1)
    with pytest.raises(InputError, match="unknown sampler 'uniform'"):
        Sampling(sampler="uniform")
    with pytest.raises(InputError, match="needs the video's frame rate"):
        sample_frames(30, fps=1)


@pytest.mark.parametrize("seek", [False, True])
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_decoded_frames_are_the_requested_ones(encoded, seek, ext):
    clip = decode(encoded[ext], [0, 9, 19, 29], seek=seek)
    assert [frame_index(f) for f in clip.frames] == clip.indices == [0, 9, 19, 29]
    assert clip.timestamps == pytest.approx([0.0, 0.9, 1.9, 2.9])
    assert clip.n_frames == N_FRAMES and clip.fps == pytest.approx(FPS)
    clip = decode(encoded[ext], [27, 3, 3, 12, 35], seek=seek)  # any order, repeats, one past the end
    assert [frame_index(f) for f in clip.frames] == clip.indices == [27, 3, 3, 12, 29]
    clip = read_clip(encoded[ext], Sampling(frames=4, sampler="centered"), max_side=16, seek=seek)
    assert clip.indices == [6, 12, 18, 24] and clip.frames[0].shape == (16, 16, 3)
    assert [frame_index(f) for f in clip.frames] == [6, 12, 18, 24]
    assert clip.images()[0].size == (16, 16)


def test_far_apart_frames_are_reached_by_seeking(tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    encode(path, n=700, gray=lambda i: (i % 32) * 8)
    monkeypatch.setattr(decoding, "_decode_sequential", None)  # auto mode must seek: (699 - 0) / 2 > 300 frames apart
    clip = read_clip(path, Sampling(frames=3))
    assert clip.indices == [0, 349, 699] and [frame_index(f) for f in clip.frames] == [0, 349 % 32, 699 % 32]
    assert clip.timestamps == pytest.approx([0.0, 34.9, 69.9])


def test_seeking_to_every_frame_matches_sequential_decoding(encoded, monkeypatch):
    monkeypatch.setattr(decoding, "_SEEK_REDECODE_GAP", 0)  # seek before every requested frame
    for ext in (".mp4", ".mkv"):
        clip = decode(encoded[ext], [29, 1, 14, 7, 22], seek=True)
        assert [frame_index(f) for f in clip.frames] == clip.indices == [29, 1, 14, 7, 22]


def test_variable_frame_rate_is_decoded_sequentially(tmp_path, monkeypatch):
    """Timestamps with gaps: frame count, duration and rate disagree, so even seek=True decodes sequentially and
    frame indices still count decoded frames."""
    path = tmp_path / "vfr.mkv"
    encode(path, n=20, pts=[0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 23])
    monkeypatch.setattr(decoding, "_SEEK_REDECODE_GAP", 0)
    clip = decode(path, [0, 5, 12, 19], seek=True)
    assert [frame_index(f) for f in clip.frames] == clip.indices == [0, 5, 12, 19]
    assert clip.timestamps == pytest.approx([0.0, 0.6, 1.5, 2.3])


def test_decoding_from_a_zip_member(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded, zipped=True))
    for seek in (False, True):
        clip = read_clip(data.videos["yt_medium_1"], Sampling(fps=2), seek=seek)
        assert [frame_index(f) for f in clip.frames] == clip.indices == [0, 5, 10, 15, 20, 25]


def test_missing_pyav_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(InputError, match=r"needs PyAV: pip install 'vlmzip\[video\]'"):
        decode("any.mp4", [0])


# ---------------------------------------------------------------------------------------------------------------
# Subtitles and prompts


def test_parse_srt_and_pick_cues():
    cues = parse_srt(SRT)
    assert cues == [Cue(0.0, 0.5, "zero"), Cue(1.0, 1.5, "one"), Cue(2.0, 2.95, "two & a half")]
    assert parse_srt("1\n0:00:01.5 --> 0:00:02.25\n<i>x</i>\n\n\n2\nbroken\n") == [Cue(1.5, 2.25, "x")]
    assert subtitles_at(cues, [0.0, 0.9, 1.9, 2.9]) == "zero\ntwo & a half"
    assert subtitles_at(cues, [2.95, 0.5, 0.49, 0.0]) == "zero"  # end exclusive, each cue once
    assert subtitles_at(cues, []) == ""


QUESTION = Question(
    question_id="001-1",
    video_id="001",
    video_file_stem="x",
    duration="short",
    domain="Knowledge",
    sub_category="Law",
    task_type="OCR Problems",
    question="What is shown?",
    options=("A. A cat.", "B. A dog.", "C. A bird.", "D. A fish."),
    answer="B",
)
OPTIONS = "A. A cat.\nB. A dog.\nC. A bird.\nD. A fish."
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)


def test_official_prompt_text():
    assert build_prompt(QUESTION) == f"{INSTRUCTION}\nWhat is shown?\n{OPTIONS}\nThe best answer is:"
    assert build_prompt(QUESTION, "hello\nworld") == (
        "This video's subtitles are listed below:\nhello\nworld\n"
        f"{INSTRUCTION}\nWhat is shown?\n{OPTIONS}\nThe best answer is:"
    )


def test_harness_prompt_variants():
    lmms = INSTRUCTION.replace("based on the video.", "based on the video and the subtitles.")
    assert build_prompt(QUESTION, template="lmms-eval") == (
        f"{lmms}\nWhat is shown?\n{OPTIONS}\n\nAnswer with the option's letter from the given choices directly."
    )
    assert build_prompt(QUESTION, "hi", template="lmms-eval") == (
        f"This video's subtitles are listed below: \nhi\n{lmms}\nWhat is shown?\n{OPTIONS}\nThe best answer is:"
    )
    assert build_prompt(QUESTION, template="vlmevalkit") == (
        f"These are the frames of a video. {INSTRUCTION}\nQuestion: What is shown?\n{OPTIONS}\nAnswer: "
    )
    assert build_prompt(QUESTION, "hi", template="vlmevalkit") == (
        "These are the frames of a video. This video's subtitles are listed below:\nhi\n"
        f"{INSTRUCTION}\nQuestion: What is shown?\n{OPTIONS}\nAnswer: "
    )
    with pytest.raises(InputError, match="unknown prompt template 'mine'.*official, lmms-eval, vlmevalkit"):
        build_prompt(QUESTION, template="mine")


def test_samples_decode_each_video_once_with_aligned_subtitles(tmp_path, encoded, monkeypatch):
    data = vm.load(make_copy(tmp_path, encoded))
    opened = []
    real = read_clip
    monkeypatch.setattr(vm, "read_clip", lambda ref, *a, **k: opened.append(ref) or real(ref, *a, **k))
    samples = list(vm.iter_samples(data, sampling=Sampling(frames=4), subtitles=True))
    assert len(samples) == 12 and len(opened) == 4
    first, long = samples[0], samples[-1]
    assert first.frame_indices == [0, 9, 19, 29] and first.timestamps == pytest.approx([0.0, 0.9, 1.9, 2.9])
    assert [frame_index(f) for f in first.frames] == [0, 9, 19, 29]
    assert first.subtitles == "zero\ntwo & a half" and first.template == "official"
    assert first.prompt == build_prompt(first.question, "zero\ntwo & a half")
    assert first.prompt.startswith("This video's subtitles are listed below:\nzero\ntwo & a half\nSelect the best")
    assert long.question.duration == "long" and long.subtitles is None  # no subtitle file: plain official prompt
    assert long.prompt == build_prompt(long.question)
    lmms = list(vm.iter_samples(data, data.questions[-1:], Sampling(frames=4), subtitles=True, template="lmms-eval"))
    assert lmms[0].subtitles == "No subtitles available"
    plain = next(vm.iter_samples(data, data.questions[:1], Sampling(frames=4, sampler="centered")))
    assert plain.subtitles is None and plain.prompt == build_prompt(plain.question)
    assert plain.frame_indices == [6, 12, 18, 24] and plain.sampling == "frames=4,sampler=centered"


def test_background_workers_give_the_same_samples(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded, zipped=True, skip=("yt_short_02",)))
    serial = list(vm.iter_samples(data, sampling=Sampling(frames=3), subtitles=True))
    threaded = list(vm.iter_samples(data, sampling=Sampling(frames=3), subtitles=True, workers=2))
    key = [(s.question.question_id, s.frame_indices, s.subtitles, s.prompt, s.error) for s in serial]
    assert key == [(s.question.question_id, s.frame_indices, s.subtitles, s.prompt, s.error) for s in threaded]


def test_missing_and_corrupt_videos_are_recorded(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded, skip=("yt_short_02",), corrupt=("yt_medium_1",)))
    assert data.partial and data.missing_videos == ("yt_short_02",)
    assert data.summary()["partial"] is True and data.summary()["videos_found"] == 3
    samples = list(vm.iter_samples(data, sampling=Sampling(frames=2)))
    errors = {s.question.question_id: s.error for s in samples if s.error}
    assert sorted(errors) == ["002-1", "002-2", "002-3", "003-1", "003-2", "003-3"]
    assert "video yt_short_02 not found under" in errors["002-1"]
    assert "cannot decode" in errors["003-1"] and "yt_medium_1.mp4" in errors["003-1"]
    assert all(s.frames for s in samples if not s.error) and not any(s.frames for s in samples if s.error)
    with pytest.raises(InputError, match="video yt_short_02 not found.*missing='record'"):
        list(vm.iter_samples(data, missing="fail"))
    with pytest.raises(InputError, match="cannot decode"):
        list(vm.iter_samples(data, data.questions[6:], missing="fail"))
    records = [score(s, None if s.error else s.question.answer) for s in samples]
    overall = summarize(records)["overall"]
    assert overall["total"] == 12 and overall["errors"] == 6 and overall["evaluated"] == overall["correct"] == 6


# ---------------------------------------------------------------------------------------------------------------
# Selection


def test_select_filters_and_stratified_limit(tmp_path, encoded):
    rows = hf_rows()
    extra = []  # two more short videos: 12 short, 3 medium, 3 long questions
    for n in (5, 6):
        for r in rows[:3]:
            extra.append(
                r | {"video_id": f"00{n}", "videoID": f"yt_extra_{n}", "question_id": f"00{n}-" + r["question_id"][-1]}
            )
    data = vm.load(make_copy(tmp_path, encoded, rows=rows + extra))
    assert data.partial and data.missing_videos == ("yt_extra_5", "yt_extra_6")
    assert [q.question_id for q in vm.select(data, durations=["medium", "long"])] == [
        "003-1", "003-2", "003-3", "004-1", "004-2", "004-3",
    ]  # fmt: skip
    assert vm.select(data, durations="medium,long") == vm.select(data, durations=["long", "medium"])
    picked = vm.select(data, limit=6)
    assert Counter(q.duration for q in picked) == {"short": 4, "medium": 1, "long": 1}  # 12/18*6, 3/18*6, 3/18*6
    assert [q.question_id for q in picked] == [q.question_id for q in vm.select(data, limit=6)]  # deterministic
    assert [q.question_id for q in picked] == [q.question_id for q in data.questions if q in picked]  # dataset order
    shorts = [q for q in picked if q.duration == "short"]
    assert len({q.video_file_stem for q in shorts}) == 2  # whole videos first: one full video + one more question
    assert vm.select(data, limit=100) == list(data.questions) and vm.select(data, limit=0) == []
    assert all(q.video_file_stem in data.videos for q in vm.select(data, available_only=True))
    assert len(vm.select(data, available_only=True)) == 12
    with pytest.raises(InputError, match="unknown duration.*'tiny'.*short, medium, long"):
        vm.select(data, durations=["tiny"])


# ---------------------------------------------------------------------------------------------------------------
# Answers and results


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(C).", "C"),
        ("D. A fish.", "D"),
        ("c) a bird", "C"),
        ("The best answer is: A", "A"),
        ("The best answer is A.", "A"),
        ("the answer is (d)", "D"),
        ("Answer: b", "B"),
        ("The correct answer is C. A bird.", "C"),
        ("I think B", "B"),
        ("Based on the video, C is right.", "C"),  # the B of "Based" is not standalone
        ("A man walks his dog, so the answer is B.", "B"),  # an article "A" before another letter is skipped
        ("A is correct.", "A"),
        ("Not C, the answer is D.", "D"),  # an answer statement wins over an earlier letter
        ("A is correct because B is wrong.", "A"),  # an "A" before a verb is not an article
        ("**B**", "B"),
        ("The video shows a person cooking pasta in a small kitchen with many tools around.", None),
        ("none of them", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(response, letter):
    assert extract_answer(response) == letter


def test_authors_extractor_is_available_verbatim():  # more cases in test_extractors.py
    assert extract_answer("Based on the video, C", "videomme-authors") == "B"  # the original's quirk
    assert extract_answer("The best answer is D", "videomme-authors") == "D"
    assert (
        extract_answer("the video shows a person cooking pasta in a kitchen full of tools", "videomme-authors") is None
    )
    with pytest.raises(InputError, match="unknown answer extractor"):
        extract_answer("A", "llm-judge")


def sample_of(question: Question, error: str | None = None) -> Sample:
    return Sample(question, prompt="p", template="official", sampling="frames=2,sampler=linspace", error=error)


LONG_NO_LETTER = "I cannot tell that from these few frames, sorry, it is not visible"


def test_summarize_hand_computed():
    def q(qid, duration, domain, task, answer="A"):
        return Question(
            qid, qid[:3], qid[:3], duration, domain, "Law", task, "q?", ("A. a", "B. b", "C. c", "D. d"), answer
        )

    cases = [  # (question, response, error)
        (q("001-1", "short", "Knowledge", "OCR Problems"), "A", None),  # correct
        (q("001-2", "short", "Knowledge", "OCR Problems"), "The answer is A", None),  # correct
        (q("001-3", "short", "Knowledge", "Counting Problem"), "B", None),  # wrong
        (q("002-1", "short", "Multilingual", "Counting Problem"), LONG_NO_LETTER, None),
        (q("003-1", "long", "Knowledge", "OCR Problems"), "a", None),  # correct
        (q("003-2", "long", "Knowledge", "OCR Problems"), None, "video 003 not found"),
    ]  # fmt: skip
    records = [score(sample_of(question, error), response) for question, response, error in cases]
    assert [r.prediction for r in records] == ["A", "A", "B", None, "A", None]
    assert records[1].response == "The answer is A" and records[5].error == "video 003 not found"
    summary = summarize(records)
    overall = summary["overall"]
    assert {k: overall[k] for k in ("total", "errors", "evaluated", "unparsed", "correct")} == {
        "total": 6, "errors": 1, "evaluated": 5, "unparsed": 1, "correct": 3,
    }  # fmt: skip
    assert overall["accuracy"] == pytest.approx(0.6) and overall["accuracy_parsed"] == pytest.approx(0.75)
    # Wilson 95% for 3/5: centre (0.6 + z²/10) / (1 + z²/5), half-width z*sqrt(0.048 + z²/100) / (1 + z²/5)
    assert overall["ci95"] == pytest.approx([0.23072, 0.88238], abs=1e-5)
    assert list(summary["by_duration"]) == ["short", "long"]
    assert summary["by_duration"]["short"]["accuracy"] == pytest.approx(0.5)
    assert summary["by_duration"]["long"] | {"ci95": None} == {
        "total": 2, "errors": 1, "evaluated": 1, "unparsed": 0, "correct": 1,
        "accuracy": 1.0, "ci95": None, "accuracy_parsed": 1.0,
    }  # fmt: skip
    assert summary["by_domain"]["Multilingual"]["accuracy"] == 0.0
    assert summary["by_domain"]["Multilingual"]["accuracy_parsed"] is None
    assert summary["by_task_type"]["OCR Problems"]["correct"] == 3
    assert summary["by_task_type"]["Counting Problem"]["accuracy"] == 0.0
    assert list(summary["by_sub_category"]) == ["Law"]
    # records written as JSON lines and read back summarize the same
    assert summarize(json.loads(json.dumps(r.to_dict())) for r in records) == summary


def test_wilson_interval_known_values():
    assert wilson_interval(3, 4) == pytest.approx((0.30064, 0.95441), abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) is None


def test_record_keeps_frames_and_settings(tmp_path, encoded):
    data = vm.load(make_copy(tmp_path, encoded))
    sample = next(vm.iter_samples(data, sampling=Sampling(frames=2), subtitles=True))
    record = score(sample, "The best answer is: C")
    assert record.correct and record.prediction == "C" and record.subtitles
    row = record.to_dict()
    assert row["frame_indices"] == [0, 29] and row["timestamps"] == pytest.approx([0.0, 2.9])
    assert row["template"] == "official" and row["extractor"] == "vlmzip" and row["subtitles_style"] == "vlmzip"
    assert row["sampling"] == "frames=2,sampler=linspace"
    assert json.loads(json.dumps(row)) == row


def test_copy_is_never_modified(tmp_path, encoded):
    root = make_copy(tmp_path / "copy", encoded, zipped=True)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    data = vm.load(root)
    list(vm.iter_samples(data, sampling=Sampling(frames=2), subtitles=True))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    shutil.rmtree(root)
