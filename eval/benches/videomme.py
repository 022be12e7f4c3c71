"""``vlmzip eval --bench videomme --data-root DIR``: Video-MME from a local copy, in any published layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vlmzip.eval.benches.base import Bench, Loaded, Option, register_bench

if TYPE_CHECKING:
    from vlmzip.eval.video import Sampling


@register_bench
class VideoMME(Bench):
    """Video-MME (``vlmzip.eval.videomme``): a duration filter and a duration-stratified ``--limit``, and
    optional subtitles (the cues shown at the sampled frames)."""

    name = "videomme"
    title = "Video-MME"
    description = "a Video-MME copy"
    data = Option.of("--data-root", type=Path, help="a local Video-MME copy, any layout (never downloaded)")
    data_metavar = "DIR"
    options = (
        Option.of("--subtitles", action="store_true", help="add the cues at the sampled frames"),
        Option.of("--duration", help="comma-separated: short,medium,long"),
    )

    def load(self, args: argparse.Namespace, data: Path, sampling: Sampling, rank: int = 0, world: int = 1) -> Loaded:
        from vlmzip.eval import parallel, videomme

        dataset = videomme.load(data)
        questions = parallel.shard(videomme.select(dataset, durations=args.duration, limit=args.limit), rank, world)
        samples = videomme.iter_samples(
            dataset,
            questions,
            sampling,
            subtitles=args.subtitles,
            template=args.template,
            max_side=args.max_side,
            missing=args.missing,
            workers=args.decode_workers,
        )
        described = {
            "layout": dataset.layout,
            "partial": dataset.partial,
            "manifest_sha256": dataset.manifest_sha256,
            "questions": len(questions),
        }
        return Loaded(samples, described, len(dataset.questions))
