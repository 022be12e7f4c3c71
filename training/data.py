"""What a training run is (``TrainConfig``) and the batches it trains on: every step's batch is a pure function of
``(seed, step)`` (``step_examples``), made by data-loader workers on the host (``Stream``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import ProcessorMixin

from training.inputs import QwenIndex, tokens
from vlmzip.eval import synthetic
from vlmzip.eval.fixtures import FAMILIES
from vlmzip.eval.processing import image_side, resized_for

__all__ = ["Stream", "TrainConfig", "step_examples"]

# Each medium's curriculum (indexed by TrainConfig.image_levels / video_levels) and question families.
_CURRICULA = {"image": synthetic.IMAGE_CURRICULUM, "video": synthetic.VIDEO_CURRICULUM}
_CATALOGUES = {"image": synthetic.IMAGE_FAMILIES, "video": synthetic.VIDEO_FAMILIES}


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``image_levels`` / ``video_levels`` index ``synthetic.IMAGE_CURRICULUM`` / ``VIDEO_CURRICULUM``. The top
    level of a step rises linearly over ``curriculum_fraction`` of the steps; half of each batch is at the top
    level and half at a level drawn uniformly below it, so easy scenes are never forgotten. Each example is a
    caption (``caption_fraction``: "Describe the image." answered with every object, which supervises all
    objects at once), a bare question answered with the word (``word_fraction``) or the official
    multiple-choice prompt answered with the letter; training words and letters together from the start
    avoids the hundreds of steps a later switch costs. ``lookup_fraction`` of the examples ask the prompt's
    question by its answer (``synthetic.option_lookup``), which teaches matching an answer to its option.
    ``focus_fraction`` of each batch's top-level half asks only ``focus_families`` (image families in image
    batches, video families in Qwen's video batches), at the top of ``image_levels`` / ``video_levels``: more of
    the questions a model still gets wrong, without dropping the others.
    Every step's data is a pure function of ``(seed, step)``, whatever the number of loader workers, so a
    resumed run sees the same batches."""

    family: str
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    vision_lr: float = 0.0  # the vision tower's peak learning rate (0: lr); the schedule scales both alike
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    image_levels: tuple[int, int] = (0, len(synthetic.IMAGE_CURRICULUM) - 1)
    video_levels: tuple[int, int] = (0, len(synthetic.VIDEO_CURRICULUM) - 1)
    curriculum_fraction: float = 0.5
    caption_fraction: float = 0.2
    word_fraction: float = 0.3
    lookup_fraction: float = 0.0
    focus_families: tuple[str, ...] = ()  # question families: synthetic.IMAGE_FAMILIES or VIDEO_FAMILIES
    focus_fraction: float = 0.0
    video_every: int = 2  # Qwen: every n-th step is a video batch (0: images only)
    video_batch_size: int = 0  # 0: batch_size // 4
    eval_every: int = 500
    eval_size: int = 256
    checkpoint_every: int = 500
    log_every: int = 20
    grad_clip: float = 1.0
    workers: int = 0  # data-loader processes (0: in the training process)
    max_minutes: float = 0.0  # stop early (checkpoint and model saved) after this long; 0: no limit
    stop_at: int = 0  # stop early (checkpoint and model saved) after this step, on the schedule of `steps`; 0: none
    init: str = ""  # a saved fixture directory to start from (a new schedule and optimizer); "": random init
    # The side scenes are rendered at (0: the model's image size). The processor's resize takes them to the model's
    # size, as it takes the 64 x 64 test sets to a fixture of another size: so such a fixture trains on what it is
    # served (`resized_for`).
    scene_size: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be between 1 and steps ({self.steps}), or 0 for none; got {self.stop_at}")
        names = ("video_every", "video_batch_size", "workers", "max_minutes", "vision_lr", "scene_size")
        negative = [n for n in names if getattr(self, n) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0")
        fractions = (self.caption_fraction, self.word_fraction, self.lookup_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ValueError(
                "caption_fraction, word_fraction and lookup_fraction must be >= 0 and sum to at most 1, "
                f"got {fractions}"
            )
        for medium, curriculum in _CURRICULA.items():
            levels = self.levels(medium)
            if not 0 <= levels[0] <= levels[1] < len(curriculum):
                raise ValueError(f"{medium}_levels must be 0 <= lo <= hi < {len(curriculum)}, got {levels}")
        if not 0 <= self.focus_fraction <= 1 or (self.focus_fraction > 0) != bool(self.focus_families):
            raise ValueError(
                f"focus_fraction={self.focus_fraction} with focus_families={self.focus_families}: give both "
                "(a fraction in (0, 1] and the families) or neither"
            )
        known = [family for catalogue in _CATALOGUES.values() for family in catalogue]
        unknown = sorted(set(self.focus_families) - set(known))
        if unknown:
            raise ValueError(f"focus_families {unknown}: choose from {', '.join(known)}")
        if self.focus_difficulty("video") and not (self.family == "qwen2_5_vl" and self.video_every):
            raise ValueError(
                f"focus_families names video families, but a {self.family} run with video_every={self.video_every} "
                "trains on no videos"
            )
        self.focus_difficulty("image")  # a difficulty refuses families its scenes cannot ask (video: above)

    def levels(self, medium: str) -> tuple[int, int]:
        """``image_levels`` or ``video_levels``: the span of ``medium``'s curriculum this run trains on."""
        return self.image_levels if medium == "image" else self.video_levels

    def focus_difficulty(self, medium: str) -> synthetic.ImageDifficulty | synthetic.VideoDifficulty | None:
        """The top level of ``medium`` asking only the focus families of that medium; None if there are none."""
        families = tuple(f for f in self.focus_families if f in _CATALOGUES[medium])
        return replace(_CURRICULA[medium][self.levels(medium)[1]], families=families) if families else None

    def is_video_step(self, step: int) -> bool:
        """Qwen: the last step of every ``video_every`` is a video batch (1: every step)."""
        return self.family == "qwen2_5_vl" and self.video_every > 0 and step % self.video_every == self.video_every - 1


def _top_level(levels: tuple[int, int], step: int, cfg: TrainConfig) -> int:
    lo, hi = levels
    span = max(1, int(cfg.steps * cfg.curriculum_fraction))
    return min(hi, lo + (hi - lo + 1) * step // span)


def _example_levels(
    levels: tuple[int, int], step: int, n: int, cfg: TrainConfig, rng: np.random.Generator
) -> list[int]:
    top = _top_level(levels, step, cfg)
    below = rng.integers(levels[0], top + 1, size=n - n // 2).tolist()
    return [top] * (n // 2) + below


def _difficulties(cfg: TrainConfig, medium: str, step: int, n: int, rng: np.random.Generator) -> list[tuple]:
    """(difficulty, examples) of step ``step``'s batch of ``n`` ``medium`` examples: the focus examples first,
    taken from the top-level half, then the rest by level."""
    levels = _example_levels(cfg.levels(medium), step, n, cfg, rng)
    focused = cfg.focus_difficulty(medium)
    focus = round(cfg.focus_fraction * (n // 2)) if focused else 0
    rest = [(_CURRICULA[medium][level], k) for level, k in Counter(levels[focus:]).items()]
    return [(focused, focus), *rest] if focus else rest


def _examples(
    items: Sequence[tuple[str, synthetic.Question]],
    medium: str,
    rng: np.random.Generator,
    cfg: TrainConfig,
) -> tuple[list[str], list[str]]:
    """(prompt text, answer) per (caption text pair, question): a caption, the bare question -> word, the
    official prompt of the question asked by its answer -> letter, or the official prompt -> letter."""
    prompts, answers = [], []
    for (caption_prompt, caption), q in items:
        u = rng.random()
        if u < cfg.caption_fraction:
            prompts.append(caption_prompt)
            answers.append(caption)
        elif u < cfg.caption_fraction + cfg.word_fraction:
            prompts.append(q.text)
            answers.append(q.answer_word)
        elif u < cfg.caption_fraction + cfg.word_fraction + cfg.lookup_fraction:
            prompts.append(synthetic.mc_prompt(synthetic.option_lookup(q), medium))
            answers.append(q.answer)
        else:
            prompts.append(synthetic.mc_prompt(q, medium))
            answers.append(q.answer)
    return prompts, answers


def _step_rng(cfg: TrainConfig, step: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(cfg.seed, spawn_key=(3, step))))


def scene_side(processor: ProcessorMixin, cfg: TrainConfig) -> int:
    """The side training and validation scenes are rendered at: ``cfg.scene_size``, or the processor's."""
    return cfg.scene_size or image_side(processor)


def step_examples(processor: ProcessorMixin, cfg: TrainConfig, step: int) -> dict:
    """The CPU half of step ``step``'s batch: token tensors and uint8 ``images`` (or a list of ``videos``), of
    scenes rendered at ``cfg.scene_size`` (0: the processor's side) and resized to the processor's side as it
    would resize them."""
    rng = _step_rng(cfg, step)
    size = scene_side(processor, cfg)
    if cfg.is_video_step(step):
        n = cfg.video_batch_size or max(1, cfg.batch_size // 4)
        clips, items = [], []
        for difficulty, k in _difficulties(cfg, "video", step, n, rng):
            vb = synthetic.video_batch(k, rng, difficulty, split="train", size=size)
            clips += vb.videos
            items += [(synthetic.video_caption(tl), qs[0]) for tl, qs in zip(vb.timelines, vb.questions)]
        prompts, answers = _examples(items, "video", rng, cfg)
        clips = [resized_for(processor, clip) for clip in clips]
        return {**tokens(processor, prompts, answers, "video", [len(c) for c in clips]), "videos": clips}
    images, items = [], []
    for difficulty, k in _difficulties(cfg, "image", step, cfg.batch_size, rng):
        ib = synthetic.image_batch(k, rng, difficulty, split="train", size=size)
        images.append(ib.images)
        items += [(synthetic.caption(scene), q) for scene, q in zip(ib.scenes, ib.questions)]
    prompts, answers = _examples(items, "image", rng, cfg)
    return {**tokens(processor, prompts, answers, "image"), "images": resized_for(processor, torch.cat(images))}


class Stream(torch.utils.data.IterableDataset):
    """Steps ``start .. cfg.steps - 1`` in order; loader worker ``w`` of ``W`` makes steps ``start + w + k W``
    (the loader takes from workers in turn, so the order is kept). ``index`` adds Qwen's index tensors."""

    def __init__(self, processor: ProcessorMixin, cfg: TrainConfig, start: int, index: QwenIndex | None = None) -> None:
        self.processor, self.cfg, self.start, self.index = processor, cfg, start, index

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info:
            torch.set_num_threads(1)
        for step in range(self.start + worker, self.cfg.steps, workers):
            batch = step_examples(self.processor, self.cfg, step)
            if self.index is not None:
                batch.update(self.index(self.processor, batch))
            yield step, batch


# Qwen2.5-VL's vision attention calls a non-flash backend once per window (thousands of calls for a 512-image
