"""``vlmzip eval --bench images`` / ``--bench videos``: the test sets that ship with vlmzip, read by the mcq and
Video-MME benches, with defaults that make them run with nothing but a model (or nothing at all)."""

from __future__ import annotations

import argparse

from vlmzip.eval.benches.base import register_bench
from vlmzip.eval.benches.mcq import MultipleChoice
from vlmzip.eval.benches.videomme import VideoMME

DEFAULT_MODEL = "qwen2_5_vl"
DEFAULT_POLICIES = ("none", "random:keep=0.25", "vtc-cls:keep=0.25")
EMBEDDED_LIMIT = 90  # of 180 questions: ~65 s on two free CPU cores (docs/performance.md)


@register_bench
class BundledImages(MultipleChoice):
    """The shipped image test set (``bundled.dataset_path("image")``), a JSONL file read as ``mcq`` reads one."""

    name = "images"
    description = "the bundled image test set"
    bundled = "image"
    default_model = DEFAULT_MODEL
    default_policies = DEFAULT_POLICIES


@register_bench
class BundledVideos(VideoMME):
    """The shipped video test set (``bundled.dataset_path("video")``, in the Video-MME layout), every frame of
    each clip by default; with no arguments at all, ``vlmzip eval`` runs it on the CPU."""

    name = "videos"
    description = "the bundled video test set"
    bundled = "video"
    default_model = DEFAULT_MODEL
    default_policies = DEFAULT_POLICIES
    embedded_limit = EMBEDDED_LIMIT
    embedded_note = "the bundled Qwen2.5-VL fixture on the bundled video test set"

    def configure(self, args: argparse.Namespace, notes: list[str]) -> None:
        from vlmzip.eval import bundled

        super().configure(args, notes)  # --compat first: its frames replace this default
        if args.frames is None and args.fps is None:
            # every frame of the 2 fps clips, as the fixtures were trained
            args.fps, args.max_frames = bundled.VIDEO_FPS, args.max_frames or 64
            notes.append(f"frames: every frame (--fps {args.fps:g}, --max-frames {args.max_frames})")
