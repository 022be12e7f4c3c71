"""Data-parallel ``vlmzip eval`` under ``accelerate launch`` (or ``torchrun``): shard by video, merge on rank 0.

Each process scores the videos dealt to it (``shard``: sorted by video, round robin, so a video's questions stay
together and are decoded once) into its own directory ``OUT/rank{r}`` — an ordinary run directory, resumable on
its own — and rank 0, once every rank is done, concatenates them into ``OUT/samples.jsonl`` (``merge``) and
computes ``OUT/results.json`` from it as for a single-process run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

from vlmzip.eval.questions import Question

__all__ = ["merge", "rank_dir", "shard"]

T = TypeVar("T")


def _video(question: Question) -> str:
    return question.video_file_stem


def shard(items: Sequence[T], rank: int, world: int, media: Callable[[T], Hashable] = _video) -> list[T]:
    """The items whose media (``media(item)``: a Video-MME question's video by default) process ``rank`` of
    ``world`` scores, in their original order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    keys = sorted({media(item) for item in items}, key=str)
    mine = set(keys[rank::world])
    return [item for item in items if media(item) in mine]


def rank_dir(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}"


def merge(out_dir: Path, world: int, samples_name: str, config_name: str) -> None:
    """Concatenate every rank's ``samples_name`` into ``out_dir`` (rewritten, so a resumed run merges again) and
    write rank 0's ``config_name`` there with the number of processes and the questions of all ranks."""
    missing = [str(rank_dir(out_dir, r)) for r in range(world) if not (rank_dir(out_dir, r) / samples_name).exists()]
    if missing:
        raise FileNotFoundError(f"cannot merge {out_dir}: no {samples_name} in {', '.join(missing)}")
    merged = out_dir / f".{samples_name}.merging"
    with merged.open("w", encoding="utf-8") as out:
        for rank in range(world):
            for line in (rank_dir(out_dir, rank) / samples_name).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.write(line + "\n")
    shutil.move(merged, out_dir / samples_name)
    configs = [json.loads((rank_dir(out_dir, r) / config_name).read_text(encoding="utf-8")) for r in range(world)]
    config = {**configs[0], "processes": world}
    if all("questions" in c for c in configs):  # each rank counted its own shard
        config["questions"] = sum(int(c["questions"]) for c in configs)
    (out_dir / config_name).write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
