"""Whole data sets: in-memory batches for training, and the writers of the on-disk sets (JSONL + PNG images,
videos in the Video-MME Hugging Face layout) with the command line that writes all splits."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vlmzip.eval.synthetic.images import ImageDifficulty, sample_image_item
from vlmzip.eval.synthetic.questions import Question
from vlmzip.eval.synthetic.renderer import render
from vlmzip.eval.synthetic.scenes import SPLITS, Scene, _as_rng, split_rng
from vlmzip.eval.synthetic.video import (
    Event,
    Timeline,
    VideoDifficulty,
    render_timeline,
    sample_video_item,
    timeline_events,
    timeline_frames,
)

_SPLIT_CODE = {"train": "tr", "validation": "va", "test": "te"}
VIDEOMME_COLUMNS: tuple[str, ...] = (
    "video_id",
    "duration",
    "domain",
    "sub_category",
    "url",
    "videoID",
    "question_id",
    "task_type",
    "question",
    "options",
    "answer",
)
VIDEOMME_PARQUET = "videomme/test-00000-of-00001.parquet"
DOMAIN = "Synthetic shapes"


@dataclass(frozen=True)
class ImageBatch:
    images: torch.Tensor  # uint8 [B, 3, H, W]
    scenes: tuple[Scene, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class VideoBatch:
    videos: tuple[torch.Tensor, ...]  # each uint8 [T_i, 3, H, W]
    timelines: tuple[Timeline, ...]
    questions: tuple[tuple[Question, ...], ...]


def image_batch(
    n: int,
    rng: np.random.Generator | int,
    difficulty: ImageDifficulty = ImageDifficulty(),
    *,
    split: str | None = "train",
    size: int = 64,
    device: torch.device | str | None = None,
) -> ImageBatch:
    """``n`` (scene, question) pairs of ``split`` rendered to ``uint8 [n, 3, size, size]`` on ``device``.
    Pass one ``np.random.Generator`` (e.g. ``split_rng(seed, "image", "train")``) across calls."""
    gen = _as_rng(rng)
    items = [sample_image_item(gen, difficulty, split) for _ in range(n)]
    scenes = tuple(s for s, _ in items)
    return ImageBatch(render(scenes, size, device), scenes, tuple(q for _, q in items))


def video_batch(
    n: int,
    rng: np.random.Generator | int,
    difficulty: VideoDifficulty | None = None,
    *,
    split: str | None = "train",
    n_questions: int = 1,
    size: int = 64,
    device: torch.device | str | None = None,
) -> VideoBatch:
    """``n`` clips of ``split`` with ``n_questions`` questions each; all frames rendered in one batch."""
    gen = _as_rng(rng)
    items = [sample_video_item(gen, difficulty, split, n_questions) for _ in range(n)]
    frames = [timeline_frames(tl) for tl, _ in items]
    flat = render([s for f in frames for s in f], size, device)
    videos = tuple(torch.split(flat, [len(f) for f in frames]))
    return VideoBatch(videos, tuple(tl for tl, _ in items), tuple(qs for _, qs in items))


@dataclass(frozen=True)
class ImageRecord:
    id: str
    image: Path
    scene: Scene
    question: Question
    extra: dict = field(default_factory=dict, compare=False)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def write_image_set(
    root: str | Path,
    n: int,
    split: str,
    seed: int,
    *,
    difficulty: ImageDifficulty = ImageDifficulty(),
    size: int = 64,
    chunk: int = 256,
) -> Path:
    """Write ``n`` images of ``split``: ``root/{split}.jsonl`` and ``root/images/{split}/{id}.png``."""
    from PIL import Image

    _check_split(split)
    root = Path(root)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "image", split)
    items = [sample_image_item(rng, difficulty, split) for _ in range(n)]
    lines = []
    for start in range(0, n, chunk):
        part = items[start : start + chunk]
        pixels = render([s for s, _ in part], size).permute(0, 2, 3, 1).numpy()
        for k, (scene, q) in enumerate(part):
            i = start + k
            ident = f"{split}-{i:06d}"
            rel = f"images/{split}/{ident}.png"
            Image.fromarray(pixels[k]).save(root / rel, format="PNG")
            rec = {"id": ident, "image": rel, "split": split, "size": size, **q.to_json(), "scene": scene.to_json()}
            lines.append(json.dumps(rec, sort_keys=True))
    path = root / f"{split}.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_image_set(root: str | Path, split: str) -> list[ImageRecord]:
    """Read back ``root/{split}.jsonl`` (scenes and questions as objects, image paths absolute)."""
    root = Path(root)
    records = []
    for line in (root / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        q = Question(d["family"], d["question"], tuple(d["options"]), d["answer"], tuple(d["params"].items()))
        records.append(ImageRecord(d["id"], root / d["image"], Scene.from_json(d["scene"]), q, d))
    return records


def encode_mp4(frames: np.ndarray, path: str | Path, fps: float = 2.0) -> None:
    """Write ``uint8 [T, H, W, 3]`` RGB frames as H.264 (libx264, qp 0 = lossless in YUV, ``yuv444p``,
    one thread so the bytes are reproducible) in MP4 with PyAV."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"qp": "0", "preset": "medium", "threads": "1"})
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv444p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _srt_time(ms: int) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_text(tl: Timeline, fps: float = 2.0, max_cue_s: float = 2.0) -> str:
    """One SRT cue per frame with events (their phrases joined), lasting until the next cue, at most
    ``max_cue_s`` and never past the end of the clip. "" when the clip has no events."""
    by_frame: dict[int, list[Event]] = {}
    for e in timeline_events(tl):
        by_frame.setdefault(e.frame, []).append(e)
    frames = sorted(by_frame)
    rate = Fraction(fps).limit_denominator(1001)
    end_ms = round(Fraction(tl.n_frames) / rate * 1000)
    cues = []
    for i, f in enumerate(frames):
        start = round(Fraction(f) / rate * 1000)
        nxt = round(Fraction(frames[i + 1]) / rate * 1000) if i + 1 < len(frames) else end_ms
        end = min(nxt, start + round(max_cue_s * 1000), end_ms)
        text = " ".join(e.phrase[0].upper() + e.phrase[1:] + "." for e in by_frame[f])
        cues.append(
            f'{i + 1}\n{_srt_time(start)} --> {_srt_time(end)}\n<font color="white" size=".72c">{text}</font>\n'
        )
    return "\n".join(cues)


def _duration_class(n_frames: int) -> str:
    return "short" if n_frames < 16 else "medium" if n_frames < 24 else "long"


def _sub_category(tl: Timeline) -> str:
    kinds = sorted({e.kind for e in timeline_events(tl)})
    return ", ".join(kinds) if kinds else "static"


def write_video_set(
    root: str | Path,
    n_videos: int,
    split: str,
    seed: int,
    *,
    fps: float = 2.0,
    size: int = 64,
    difficulty: VideoDifficulty | None = None,
    subtitles: bool = True,
) -> Path:
    """Write ``n_videos`` clips of ``split`` in the Video-MME Hugging Face layout under ``root`` (one split
    per root): the parquet (3 questions per video), ``data/{videoID}.mp4``, ``subtitle/{videoID}.srt``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_split(split)
    root = Path(root)
    for sub in ("videomme", "data", "subtitle"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "video", split)
    width = max(3, len(str(n_videos)))
    rows: dict[str, list] = {c: [] for c in VIDEOMME_COLUMNS}
    for i in range(n_videos):
        tl, questions = sample_video_item(rng, difficulty, split, 3)
        video_id = f"{i + 1:0{width}d}"
        vid = f"syn{_SPLIT_CODE[split]}{i:05d}"
        frames = render_timeline(tl, size).permute(0, 2, 3, 1).numpy()
        encode_mp4(frames, root / "data" / f"{vid}.mp4", fps)
        srt = srt_text(tl, fps)
        if subtitles and srt:
            (root / "subtitle" / f"{vid}.srt").write_text(srt, encoding="utf-8")
        for j, q in enumerate(questions):
            values = {
                "video_id": video_id,
                "duration": _duration_class(tl.n_frames),
                "domain": DOMAIN,
                "sub_category": _sub_category(tl),
                "url": f"synthetic://vlmzip/{split}/seed{seed}/{i}",
                "videoID": vid,
                "question_id": f"{video_id}-{j + 1}",
                "task_type": q.family,
                "question": q.text,
                "options": list(q.options),
                "answer": q.answer,
            }
            for c in VIDEOMME_COLUMNS:
                rows[c].append(values[c])
    schema = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in VIDEOMME_COLUMNS])
    path = root / VIDEOMME_PARQUET
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


def split_counts(n: int) -> dict[str, int]:
    """How the CLI divides ``n`` items: validation and test ``n // 10`` each, train the rest."""
    return {"train": n - 2 * (n // 10), "validation": n // 10, "test": n // 10}


def write_all(
    out: str | Path,
    n_images: int,
    n_videos: int,
    seed: int,
    *,
    size: int = 64,
    fps: float = 2.0,
    subtitles: bool = True,
) -> dict:
    """All splits: ``out/image/{split}.jsonl`` + ``out/image/images/{split}/*.png`` and
    ``out/video/{split}/`` in the Video-MME layout; ``out/manifest.json`` records the arguments."""
    out = Path(out)
    manifest = {"seed": seed, "size": size, "fps": fps, "subtitles": subtitles, "images": {}, "videos": {}}
    for split, k in split_counts(n_images).items():
        if n_images:
            write_image_set(out / "image", k, split, seed, size=size)
            manifest["images"][split] = k
    for split, k in split_counts(n_videos).items():
        if n_videos:
            write_video_set(out / "video" / split, k, split, seed, fps=fps, size=size, subtitles=subtitles)
            manifest["videos"][split] = k
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from vlmzip.eval import synthetic  # the package's docstring describes the whole

    p = argparse.ArgumentParser(prog="python -m vlmzip.eval.synthetic", description=synthetic.__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--images", type=int, default=0, help="images over all splits (80/10/10)")
    p.add_argument("--videos", type=int, default=0, help="videos over all splits (80/10/10), 3 questions each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image / frame side in pixels")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--no-subtitles", action="store_true")
    args = p.parse_args(argv)
    manifest = write_all(
        args.out, args.images, args.videos, args.seed, size=args.size, fps=args.fps, subtitles=not args.no_subtitles
    )
    print(json.dumps(manifest, sort_keys=True))
    return 0
