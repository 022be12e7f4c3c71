"""``vlmzip eval --bench videomme --data-root DIR``: Video-MME from a local copy, in any published layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vlmzip.eval.benches.base import Bench, Loaded, Option, register_bench

if TYPE_CHECKING:
    from vlmzip.eval.video import Sampling

# Literal here, so that building the parser imports no data-side code (tests check they match the modules').
SUBTITLE_STYLES = ("vlmzip", "lmms-eval")  # vlmzip.eval.subtitles.SUBTITLE_STYLES
COMPAT = ("lmms-eval",)  # vlmzip.eval.compat.PRESETS


@register_bench
class VideoMME(Bench):
    """Video-MME (``vlmzip.eval.videomme``): a duration filter and a duration-stratified ``--limit``, optional
    subtitles (the cues shown at the sampled frames, in vlmzip's or lmms-eval's style), and ``--compat
    lmms-eval`` (``vlmzip.eval.compat``): every setting as lmms-eval 0.7.3 scores Video-MME."""

    name = "videomme"
    title = "Video-MME"
    description = "a Video-MME copy"
    data = Option.of("--data-root", type=Path, help="a local Video-MME copy, any layout (never downloaded)")
    data_metavar = "DIR"
    options = (
        Option.of("--subtitles", action="store_true", help="add the cues at the sampled frames"),
        Option.of("--duration", help="comma-separated: short,medium,long"),
        Option.of(
            "--subtitles-style",
            choices=SUBTITLE_STYLES,
            help="vlmzip (default: the cues at the frames the model sees, in time order) or lmms-eval (0.7.3's: "
            "cues at 32 frames whatever the model sees, in set order, first <font> segment, raw entities)",
        ),
        Option.of(
            "--compat",
            choices=COMPAT,
            help="score as that harness does: lmms-eval sets --template, --frames 32, --sampler linspace, "
            "--subtitles-style, --extractor lmms-eval and --max-new-tokens 16; a contradicting option is an error",
        ),
    )

    def configure(self, args: argparse.Namespace, notes: list[str]) -> None:
        from vlmzip.errors import InputError
        from vlmzip.eval.compat import apply_preset

        if args.subtitles_style is not None and args.compat is None and not args.subtitles:
            raise InputError(
                f"--subtitles-style {args.subtitles_style} only applies to subtitles: add --subtitles, or drop it"
            )
        apply_preset(args, notes)
        if args.subtitles_style is None:
            args.subtitles_style = "vlmzip"

    def load(self, args: argparse.Namespace, data: Path, sampling: Sampling, rank: int = 0, world: int = 1) -> Loaded:
        from vlmzip.eval import parallel, videomme

        dataset = videomme.load(data)
        questions = parallel.shard(videomme.select(dataset, durations=args.duration, limit=args.limit), rank, world)
        samples = videomme.iter_samples(
            dataset,
            questions,
            sampling,
            subtitles=args.subtitles,
            subtitles_style=args.subtitles_style,
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
