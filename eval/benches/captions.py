"""``vlmzip eval --bench captions``: the fixtures describe fresh synthetic scenes (and Qwen clips), scored by the
facts their descriptions state (``vlmzip.eval.captions``): a benchmark whose answers are tens of tokens long, so
that what the decode stage keeps of the cache can change them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmzip.eval.benches.base import Bench, Loaded, Option, register_bench

if TYPE_CHECKING:
    from vlmzip.eval.caption_samples import CaptionSample
    from vlmzip.eval.video import Sampling

# model_type of the families that take videos as videos (the others would see a clip as unrelated pictures)
VIDEO_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# eval options that choose prompts, frames or answer letters: a caption run has its own, so they would be ignored
FIXED = {
    "limit": "--scenes N / --clips N count the samples",
    "template": "the prompt is the training one",
    "extractor": "descriptions are read by the caption parser",
    "frames": "clips are shown whole, every frame at 2 fps",
    "fps": "clips are shown whole, every frame at 2 fps",
    "sampler": "clips are shown whole, every frame at 2 fps",
    "max_frames": "clips are shown whole, every frame at 2 fps",
    "max_side": "pictures are rendered at the training size",
}


@register_bench
class Captions(Bench):
    """Scenes of the synthetic generator's test split (``--scenes``; and ``--clips`` for models that take
    videos), drawn with ``--seed``, each asked "Describe the image." (or "Describe the video."), the prompt the
    fixtures were trained to describe with. Each answer is scored by whole facts (objects: size, colour, shape
    and position; events of a clip) against the scene's own: precision, recall and F1 per sample; the headline
    is the mean F1 with its 95% interval."""

    name = "captions"
    title = "captions"
    description = "descriptions of generated test scenes"
    generated = True
    metric = "f1"
    default_model = "qwen2_5_vl"
    options = (
        Option.of("--scenes", type=int, default=100, help="test-split scenes to describe (default 100)"),
        Option.of("--clips", type=int, default=0, help="test-split clips to describe (Qwen models; default 0)"),
        Option.of("--seed", type=int, default=0, help="the draw of scenes and clips (default 0)"),
    )

    def configure(self, args: argparse.Namespace, notes: list[str]) -> None:
        from vlmzip.errors import InputError
        from vlmzip.eval.caption_samples import IMAGE_MAX_NEW_TOKENS, VIDEO_MAX_NEW_TOKENS

        for option, why in FIXED.items():
            if getattr(args, option, None) is not None:
                flag = "--" + option.replace("_", "-")
                raise InputError(f"--bench captions takes no {flag} ({why}): drop it")
        if args.scenes < 0 or args.clips < 0 or args.scenes + args.clips == 0:
            raise InputError(
                f"--bench captions needs something to describe: got --scenes {args.scenes} --clips {args.clips}; "
                "give --scenes N (and --clips N for a Qwen model), N >= 0, not both 0"
            )
        if args.clips:
            _check_takes_videos(args.model)
        if args.max_new_tokens is None:
            args.max_new_tokens = VIDEO_MAX_NEW_TOKENS if args.clips else IMAGE_MAX_NEW_TOKENS
            notes.append(f"max new tokens: {args.max_new_tokens}, above the longest reference (--max-new-tokens)")

    def load(
        self, args: argparse.Namespace, data: Path | None, sampling: Sampling, rank: int = 0, world: int = 1
    ) -> Loaded:
        from vlmzip.eval import caption_samples, parallel

        items = caption_samples.draw(args.scenes, args.clips, args.seed)
        mine = parallel.shard(items, rank, world, lambda item: item.id)
        sampling_note = "pictures whole; clips every frame at 2 fps"  # the eval-wide --frames default does not apply
        described = {"layout": "generated", "split": "test", "questions": len(mine), "sampling": sampling_note}
        return Loaded(caption_samples.samples(mine), described, len(items))

    def score(self, sample: CaptionSample, response: str | None, extractor: str) -> dict[str, Any]:
        from vlmzip.eval import captions

        error = sample.error or (None if response is not None else "no response")
        scored = captions.score(captions.parse(response), sample.reference).to_dict() if error is None else {}
        return {
            "question_id": sample.question.question_id,
            "medium": sample.medium,
            "prompt": sample.prompt,
            "reference": sample.caption,
            "response": response,
            "error": error,
            "extractor": "captions",
            "frames": len(sample.frames),
            **scored,
        }

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from vlmzip.eval import captions

        summary = captions.summarize(rows)
        overall = summary["overall"]
        head = ("f1", "ci95", "evaluated", "total", "unparsed", "precision", "recall")
        return {**{key: overall[key] for key in head}, "summary": summary}

    def details(self, results: dict[str, Any]) -> str | None:
        from vlmzip.eval.captions import details_table

        return details_table(results)


def _check_takes_videos(model: str) -> None:
    """:class:`InputError` unless ``model`` (a bundled name or a checkpoint directory) takes videos as videos."""
    from vlmzip.errors import InputError
    from vlmzip.eval import bundled

    try:
        config = json.loads((bundled.resolve(model) / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return  # the model's own loading names what is wrong with it
    kind = config.get("model_type")
    if kind not in VIDEO_MODEL_TYPES:
        raise InputError(
            f"--clips needs a model that takes videos ({', '.join(VIDEO_MODEL_TYPES)}); {model} is a {kind} "
            "model: drop --clips, or describe pictures only (--scenes)"
        )
