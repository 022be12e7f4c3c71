"""The samples of ``vlmzip eval --bench captions``: scenes (and Qwen clips) drawn fresh from the synthetic
generator's test split, each asked the prompt the fixtures were trained to describe it with.

Scenes are drawn as the shipped test sets are (``bundled.IMAGE_DIFFICULTY``: two to four objects;
``bundled.VIDEO_DIFFICULTY`` clips of 8-32 frames at ``bundled.VIDEO_FPS``), from the test split's own random
stream for ``seed`` (``synthetic.split_rng``), keeping the draws whose content belongs to the test split. Training
never sees them, whatever the seed. Images are rendered at 64 pixels a side, as the shipped sets are; the
processor resizes them as it resizes any picture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmzip.eval import bundled, synthetic
from vlmzip.eval.captions import Description, scene_facts, timeline_facts
from vlmzip.eval.questions import Question
from vlmzip.eval.samples import Sample
from vlmzip.eval.synthetic import Scene, Timeline

__all__ = ["IMAGE_MAX_NEW_TOKENS", "SIDE", "VIDEO_MAX_NEW_TOKENS", "CaptionSample", "Item", "draw", "samples"]

SIDE = 64  # pixels a side, as the shipped test sets
# Generation budgets above the longest reference caption, in the fixtures' word-level tokens with the final EOS:
# an image has at most 4 objects of at most 6 tokens ("small yellow triangle bottom middle ,"): 25 (also the
# longest of 20,000 test scenes). A clip's longest of 20,000 measured 91 tokens; its bound is 111 (four tracks
# with four events of 6 tokens each, a brief one with two, the first frame's objects taking no more than the
# appearances they replace).
IMAGE_MAX_NEW_TOKENS = 32
VIDEO_MAX_NEW_TOKENS = 128


@dataclass
class CaptionSample(Sample):
    """A sample asked to describe its picture or clip: ``caption`` is the reference description the fixtures
    were trained on, ``reference`` its facts."""

    caption: str = ""
    reference: Description = field(default_factory=Description)


@dataclass(frozen=True)
class Item:
    """One scene or clip of a run: its id (``image-00003``), and the content."""

    id: str
    content: Scene | Timeline

    @property
    def medium(self) -> str:
        return "video" if isinstance(self.content, Timeline) else "image"


def draw(scenes: int, clips: int, seed: int) -> list[Item]:
    """``scenes`` test-split scenes and ``clips`` test-split clips drawn with ``seed`` (images first)."""
    pictures = _test_draws(seed, "image", scenes, lambda rng: synthetic.sample_scene(rng, bundled.IMAGE_DIFFICULTY))
    videos = _test_draws(seed, "video", clips, lambda rng: synthetic.sample_timeline(rng, bundled.VIDEO_DIFFICULTY))
    return [Item(f"image-{i:05d}", s) for i, s in enumerate(pictures)] + [
        Item(f"video-{i:05d}", t) for i, t in enumerate(videos)
    ]


def _test_draws(seed: int, kind: str, n: int, sample: Callable[[np.random.Generator], Any]) -> list[Any]:
    rng = synthetic.split_rng(seed, kind, "test")
    drawn: list[Any] = []
    while len(drawn) < n:
        content = sample(rng)
        if synthetic.content_split(content) == "test":  # the split is a property of the content, not the stream
            drawn.append(content)
    return drawn


def samples(items: Sequence[Item], chunk: int = 64) -> Iterator[CaptionSample]:
    """A :class:`CaptionSample` per item, in order; pictures rendered ``chunk`` at a time."""
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        scenes = [item.content for item in part if item.medium == "image"]
        pictures = iter(_pixels(synthetic.render(scenes, SIDE)) if scenes else [])
        for item in part:
            yield _picture(item, next(pictures)) if item.medium == "image" else _clip(item)


def _pixels(batch) -> list[np.ndarray]:
    """``uint8 [B, 3, H, W]`` -> B arrays ``[H, W, 3]``, as decoded pictures are."""
    return list(batch.permute(0, 2, 3, 1).numpy())


def _picture(item: Item, pixels: np.ndarray) -> CaptionSample:
    prompt, caption = synthetic.caption(item.content)
    return CaptionSample(
        _question(item, prompt),
        prompt,
        "captions",
        "image",
        [pixels],
        medium="image",
        caption=caption,
        reference=scene_facts(item.content),
    )


def _clip(item: Item) -> CaptionSample:
    prompt, caption = synthetic.video_caption(item.content)
    frames = _pixels(synthetic.render_timeline(item.content, SIDE))
    fps = bundled.VIDEO_FPS  # as the fixtures were trained: every frame, at the clips' rate
    return CaptionSample(
        _question(item, prompt),
        prompt,
        "captions",
        f"fps={fps:g},every frame",
        frames,
        frame_indices=list(range(len(frames))),
        timestamps=[i / fps for i in range(len(frames))],
        medium="video",
        caption=caption,
        reference=timeline_facts(item.content),
    )


def _question(item: Item, prompt: str) -> Question:
    """The runner keys samples by question id; a description request has no options and no answer letter."""
    return Question(item.id, item.id, item.id, "", "", "", "", prompt, ("", "", "", ""), "", item.medium)
