"""The fidelity fixtures and test sets that ship inside vlmzip: small VLMs built by ``vlmzip.eval.fixtures``
and held-out synthetic questions, so accuracy can be measured on any machine without a download.

``model_path(name)`` is a directory for ``AutoModelForImageTextToText.from_pretrained`` /
``AutoProcessor.from_pretrained``; ``dataset_path("image")`` is the image test split (``test.jsonl`` and
``images/test/*.png``), ``dataset_path("video")`` the video test split in the Video-MME layout. ``vlmzip models``
lists them. ``python -m vlmzip.eval.bundled write-data`` rewrites the test sets exactly (they are a pure
function of the seed); the models come from the training commands in ``training/README.md`` (at the repository root).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from vlmzip.eval import synthetic
from vlmzip.eval.families import fixture_families

__all__ = [
    "IMAGE_DIFFICULTY",
    "MODELS",
    "VIDEO_DIFFICULTY",
    "dataset_path",
    "main",
    "model_path",
    "models",
    "resolve",
    "write_datasets",
    "write_image_questions",
    "write_video_questions",
]

MODELS: tuple[str, ...] = tuple(fixture_families())  # every family's fixture ships: llava, qwen2_5_vl, gemma3
DATASETS: tuple[str, ...] = ("image", "video")
ROOT = Path(__file__).with_name("data")
# The shipped questions: 2-4 objects and every image question family; clips of 8-32 frames, every video family.
IMAGE_DIFFICULTY = synthetic.IMAGE_CURRICULUM[3]
VIDEO_DIFFICULTY = synthetic.VIDEO_CURRICULUM[-1]
SEED = 0
VIDEO_FPS = 2.0
IMAGE_QUESTIONS = 400
VIDEO_CLIPS = 60


def model_path(name: str) -> Path:
    """The directory of the shipped fixture ``name`` ("llava", "qwen2_5_vl" or "gemma3")."""
    if name not in MODELS:
        raise ValueError(f"no bundled model {name!r}; the bundled models are {', '.join(MODELS)}")
    return _existing(ROOT / "models" / name, "config.json")


def resolve(model: str) -> Path:
    """``model`` as a directory to load: an existing path, else the shipped fixture of that name."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model in MODELS:
        return model_path(model)
    raise ValueError(
        f"{model}: no such directory, and not a bundled model ({', '.join(MODELS)}); "
        "vlmzip loads checkpoints from disk only"
    )


def dataset_path(kind: str) -> Path:
    """The shipped test split: "image" (JSONL + PNG) or "video" (Video-MME layout)."""
    if kind not in DATASETS:
        raise ValueError(f"no bundled dataset {kind!r}; choose 'image' or 'video'")
    marker = "test.jsonl" if kind == "image" else synthetic.VIDEOMME_PARQUET
    return _existing(ROOT / kind, marker)


def _existing(path: Path, marker: str) -> Path:
    if not (path / marker).exists():
        raise FileNotFoundError(
            f"{path / marker} is missing: this vlmzip installation lacks its package data "
            "(reinstall it from a wheel or a full clone of the repository)"
        )
    return path


def models() -> list[dict]:
    """One row per shipped model: name, architecture, its language model's type, dtype, weights on disk (MiB),
    path."""
    rows = []
    for name in MODELS:
        path = model_path(name)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        rows.append(
            {
                "name": name,
                "architecture": config["architectures"][0],
                "language_model": config["text_config"]["model_type"],
                "dtype": config.get("dtype") or config.get("torch_dtype"),
                "mib": round(weights / 2**20, 2),
                "path": str(path),
            }
        )
    return rows


def write_image_questions(root: Path, n: int, seed: int) -> Path:
    """``n`` image questions of the test split drawn with ``seed`` as the shipped ones are (``SEED``, 400 of
    them): ``root/test.jsonl`` and ``root/images/test/*.png``."""
    return synthetic.write_image_set(root, n, "test", seed, difficulty=IMAGE_DIFFICULTY)


def write_video_questions(root: Path, clips: int, seed: int) -> Path:
    """``clips`` clips of the test split (3 questions each) drawn with ``seed`` as the shipped ones are, in the
    Video-MME layout under ``root``, without subtitles (they narrate the answers)."""
    return synthetic.write_video_set(
        root, clips, "test", seed, fps=VIDEO_FPS, difficulty=VIDEO_DIFFICULTY, subtitles=False
    )


def write_datasets(root: Path = ROOT) -> None:
    """(Re)write the shipped test sets under ``root``: ``image/`` and ``video/``."""
    for kind in DATASETS:
        shutil.rmtree(root / kind, ignore_errors=True)
    write_image_questions(root / "image", IMAGE_QUESTIONS, SEED)
    write_video_questions(root / "video", VIDEO_CLIPS, SEED)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.eval.bundled", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-data", help="rewrite the shipped test sets")
    write.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    write_datasets(args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
