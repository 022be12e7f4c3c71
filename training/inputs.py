"""Training inputs made fast: what ``vlmzip.eval.processing.encode`` gives for chat prompt + answer, without the
processors.

The processors work on PIL images one at a time, which makes a 512-example batch take seconds on the host.
Training builds the same tensors directly: token ids with each placeholder spliced into the span the
processor would put there, pixels normalised (and, for Qwen, patchified) on the device, and Qwen2.5-VL's index
tensors made on the host (``QwenIndex``). ``tests/test_training.py`` checks both halves against ``encode`` on
every family.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    BatchFeature,
    Gemma3Processor,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
)
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from vlmzip.eval.processing import (
    encode,
    image_side,
    normalise,
    qwen_grids,
    qwen_patches,
    qwen_token_types,
    seconds_per_grid,
)
from vlmzip.eval.tokenizer import chat_prompt

__all__ = ["CLIP_FPS", "QwenIndex", "pixels", "tokens", "training_inputs"]


def _expansion(processor: ProcessorMixin) -> tuple[int, list[int]]:
    """(placeholder id, the ids the processor puts in its place) for one image, found by comparing the
    processor's output for a one-image prompt with the bare tokenisation."""
    side = image_side(processor)
    text = chat_prompt(processor, "x")
    bare = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    full = encode(processor, [text], torch.zeros(1, 3, side, side, dtype=torch.uint8))["input_ids"][0].tolist()
    placeholder = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    at = bare.index(placeholder)
    tail = len(bare) - at - 1
    if full[:at] != bare[:at] or full[len(full) - tail :] != bare[at + 1 :]:
        raise RuntimeError("the processor changes the prompt outside its image placeholder")
    return placeholder, full[at : len(full) - tail]


def _video_expansion(processor: ProcessorMixin, grid: torch.Tensor) -> tuple[int, list[int]]:
    """Qwen: (video placeholder id, ``<|video_pad|>`` once per merged patch of a clip of ``grid_thw`` ``grid``)."""
    video = processor.tokenizer.convert_tokens_to_ids(processor.video_token)
    return video, [video] * (int(grid.prod()) // processor.image_processor.merge_size**2)


def tokens(
    processor: ProcessorMixin,
    prompts: Sequence[str],
    answers: Sequence[str],
    medium: str,
    frames: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` (plus the family's token-type ids) of chat prompt +
    answer + EOS, with ``labels`` on the answer and EOS tokens only."""
    tok = processor.tokenizer
    texts = [chat_prompt(processor, p, medium) + a + tok.eos_token for p, a in zip(prompts, answers, strict=True)]
    rows = tok(texts, add_special_tokens=False)["input_ids"]
    answer_ids = tok([a + tok.eos_token for a in answers], add_special_tokens=False)["input_ids"]
    if medium == "video":
        spans = [_video_expansion(processor, grid) for grid in qwen_grids(processor, frames)]
    else:
        spans = [_expansion(processor)] * len(rows)
    expanded = []
    for ids, (placeholder, span) in zip(rows, spans, strict=True):
        at = ids.index(placeholder)
        expanded.append(ids[:at] + span + ids[at + 1 :])
    width = max(map(len, expanded))
    input_ids = torch.full((len(expanded), width), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (ids, n) in enumerate(zip(expanded, map(len, answer_ids), strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, len(ids) - n : len(ids)] = input_ids[i, len(ids) - n : len(ids)]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if isinstance(processor, Qwen2_5_VLProcessor):
        out["mm_token_type_ids"] = qwen_token_types(processor, input_ids)
    elif isinstance(processor, Gemma3Processor):
        out["token_type_ids"] = (input_ids == tok.image_token_id).long()  # the soft tokens, not <start_of_image>
    return out


CLIP_FPS = 2.0  # training clips' frame rate: Qwen's temporal positions follow it


def pixels(
    processor: ProcessorMixin, images: torch.Tensor | None = None, videos: Sequence[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The processor's pixel tensors for uint8 images ``[B, 3, H, W]`` or videos ``[T, 3, H, W]``, computed
    on the device the pixels are on."""
    if isinstance(processor, Qwen2_5_VLProcessor):
        if videos is not None:
            rows, grids = qwen_patches(processor, videos)
            seconds = seconds_per_grid(processor, [CLIP_FPS] * len(videos)).to(rows.device)
            return {"pixel_values_videos": rows, "video_grid_thw": grids, "second_per_grid_ts": seconds}
        rows, grids = qwen_patches(processor, [image[None] for image in images])
        return {"pixel_values": rows, "image_grid_thw": grids}
    if videos is not None:
        raise ValueError(f"{type(processor).__name__} fixtures take images, not videos")
    return {"pixel_values": normalise(processor.image_processor, images)}


def training_inputs(
    processor: ProcessorMixin,
    prompts: Sequence[str],
    answers: Sequence[str],
    medium: str,
    images: torch.Tensor | None = None,
    videos: Sequence[torch.Tensor] | None = None,
) -> BatchFeature:
    """What ``encode`` gives for chat prompt + answer + EOS (right padded), plus ``labels`` on the answer and
    EOS tokens only; pixels stay on the device they come on."""
    frames = [len(v) for v in videos] if videos is not None else None
    return BatchFeature({**tokens(processor, prompts, answers, medium, frames), **pixels(processor, images, videos)})


class QwenIndex:
    """Qwen2.5-VL's index tensors for a training batch, made on the host by transformers' own functions: the
    language model's M-RoPE ``position_ids`` and the vision tower's rotary positions and packed-sequence and
    window boundaries, as the ``image_*`` / ``video_*`` precomputed kwargs the model accepts. Left to the model,
    these are made on the GPU in per-image Python loops with host synchronisations, which made a 512-image
    training step ~8x slower than LLaVA's; the data-loader workers make them instead."""

    def __init__(self, config: Qwen2_5_VLConfig) -> None:
        with torch.device("meta"):  # only the index methods of this copy run: it holds no weights
            self._model = Qwen2_5_VLModel(config)
        vision = config.vision_config
        self._merge, self._window, self._patch = vision.spatial_merge_size, vision.window_size, vision.patch_size

    def __call__(self, processor: ProcessorMixin, batch: dict) -> dict:
        medium = "video" if "videos" in batch else "image"
        frames = [len(clip) for clip in batch["videos"]] if medium == "video" else [1] * len(batch["images"])
        grids = qwen_grids(processor, frames)
        seconds = seconds_per_grid(processor, [CLIP_FPS] * len(frames)) if medium == "video" else None
        positions, _ = self._model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            **{f"{medium}_grid_thw": grids},
            second_per_grid_ts=seconds,
            attention_mask=batch["attention_mask"],
        )
        cu_seqlens = get_vision_cu_seqlens(grids)
        window_index, cu_window_seqlens = get_vision_window_index(grids, self._merge, self._window, self._patch)
        vision = {
            "position_ids": get_vision_position_ids(grids, self._merge),
            "cu_seqlens": cu_seqlens,
            "max_seqlen": int(cu_seqlens.diff().max()),
            "window_index": window_index,
            "cu_window_seqlens": cu_window_seqlens,
            "max_window_seqlen": int(cu_window_seqlens.diff().max()),
        }
        return {"position_ids": positions, **{f"{medium}_{k}": v for k, v in vision.items()}}
