"""What a fixture's processor is given and gives: images and clips as uint8 tensors in, model inputs out.

``encode`` runs the fixture's real processor on chat-templated texts with one image or video each; Qwen videos
without a video processor (transformers builds ``Qwen2VLVideoProcessor`` only where torchvision is importable:
not in the CPU environment) are patchified here in the processor's exact layout (``qwen_patches``).
``resized_for`` resizes images as the image processor would; ``load_processor`` opens a saved fixture's
processor offline, with or without torchvision.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    BatchFeature,
    Gemma3Processor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
)

__all__ = [
    "HAS_TORCHVISION",
    "encode",
    "image_side",
    "load_processor",
    "normalise",
    "qwen_grids",
    "qwen_patches",
    "qwen_token_types",
    "resized_for",
    "seconds_per_grid",
]

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


# Private by name because it is saved under that name, which ``fixtures.save`` rewrites to the real class's.
class _QwenImagesOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor, for environments without torchvision (which
    ``Qwen2VLVideoProcessor`` needs, and which transformers' processor checks and ``AutoProcessor`` need
    even to load one). Saved under the real class name; ``encode`` handles videos for it."""

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None


def load_processor(directory: str | Path, model_type: str) -> ProcessorMixin:
    """``AutoProcessor`` from ``directory``, offline; a Qwen2.5-VL processor without its video processor when
    torchvision is missing (``AutoProcessor`` cannot build one then; ``encode`` patchifies videos instead)."""
    if model_type == "qwen2_5_vl" and not HAS_TORCHVISION:
        return _QwenImagesOnlyProcessor.from_pretrained(directory, local_files_only=True)
    return AutoProcessor.from_pretrained(directory, local_files_only=True)


def image_side(processor: ProcessorMixin) -> int:
    """The square image side the processor is configured for (Qwen: from its pixel budget)."""
    size = processor.image_processor.size
    if size.get("longest_edge"):
        return math.isqrt(int(size["longest_edge"]))
    return int(size.get("height") or size["shortest_edge"])


def seconds_per_grid(processor: ProcessorMixin, fps: Sequence[float]) -> torch.Tensor:
    """Qwen's ``second_per_grid_ts`` of clips at frame rates ``fps``: seconds per temporal patch."""
    return processor.image_processor.temporal_patch_size / torch.tensor(fps, dtype=torch.float32)


def _pil(images: torch.Tensor) -> list:
    """uint8 ``[B, 3, H, W]`` tensors -> PIL images (what the *Pil image processors take)."""
    from PIL import Image

    return [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).cpu().numpy()]


def resized_for(processor: ProcessorMixin, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, h, w]`` images (or a clip's frames) at the processor's square image side, each resized as
    its image processor resizes what it is given (PIL, with its resampling; unchanged if already that size).
    Rendered scenes made so are what a fixture whose image size is not the data's is served; Qwen's frames go
    the same way where no video processor is (transformers' resizes them with torchvision instead)."""
    side = image_side(processor)
    if tuple(images.shape[-2:]) == (side, side):
        return images
    resample = processor.image_processor.resample
    frames = [np.asarray(image.resize((side, side), resample)) for image in _pil(images)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def qwen_grids(processor: ProcessorMixin, frames: Sequence[int]) -> torch.Tensor:
    """``grid_thw`` of clips of ``frames`` frames (an image is one frame) at the fixture's image side."""
    ip = processor.image_processor
    side = image_side(processor) // ip.patch_size
    return torch.tensor([[math.ceil(n / ip.temporal_patch_size), side, side] for n in frames], dtype=torch.long)


def qwen_patches(processor: ProcessorMixin, clips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL patch rows of uint8 clips ``[T, 3, H, W]`` (an image is a one-frame clip), on the clips'
    device: frames padded to a multiple of the temporal patch by repeating the last, rescaled, normalised and
    flattened exactly as ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` lay them out: rows
    ``(t, h/m, w/m, m, m)``, columns ``(C, tp, p, p)``. Clips of one length are done together (a training
    batch is hundreds of them: one set of kernels, not one per clip). Returns (rows, grid_thw)."""
    ip = processor.image_processor
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    side = image_side(processor)
    if any(tuple(clip.shape[-2:]) != (side, side) for clip in clips):  # no resize here: render at this size
        raise ValueError(f"frames must be {side}x{side}, got {sorted({tuple(c.shape[-2:]) for c in clips})}")
    grids = qwen_grids(processor, [len(clip) for clip in clips])
    starts = [0, *grids.prod(1).cumsum(0).tolist()]  # each clip's first row
    device = clips[0].device
    rows = torch.empty(starts[-1], 3 * tp * p * p, device=device)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(len(clip), []).append(i)
    for length, members in by_length.items():
        frames = normalise(ip, torch.stack([clips[i] for i in members]))  # [k, T, 3, H, W]
        if length % tp:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, tp - length % tp, -1, -1, -1)], dim=1)
        k, t, h, w = len(members), frames.shape[1] // tp, side // p, side // p
        x = frames.reshape(k, t, tp, 3, h // m, m, p, w // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        at = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in members]).to(device)
        rows[at] = x.reshape(k * t * h * w, 3 * tp * p * p)
    return rows, grids.to(device)


def normalise(image_processor, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32, rescaled and normalised as the image processor does."""
    mean = torch.tensor(image_processor.image_mean, device=images.device).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std, device=images.device).view(3, 1, 1)
    return (images.float() * image_processor.rescale_factor - mean) / std


def encode(
    processor: ProcessorMixin,
    texts: Sequence[str],
    images: torch.Tensor | None = None,
    videos: Sequence[torch.Tensor] | None = None,
    padding_side: str = "left",
    fps: float | Sequence[float] = 2.0,
) -> BatchFeature:
    """Processor inputs for chat-templated ``texts`` with one image (uint8 ``[B, 3, H, W]``) or one video
    (uint8 ``[T, 3, H, W]`` each, ``fps`` frames a second, one rate or one per video: Qwen's temporal positions
    follow it) per text. Qwen
    videos without a video processor are patchified here and their placeholders expanded the way
    ``Qwen2_5_VLProcessor`` would."""
    kwargs = {"padding": True, "padding_side": padding_side, "return_tensors": "pt"}
    if isinstance(processor, Qwen2_5_VLProcessor):
        kwargs["return_mm_token_type_ids"] = True
    if videos is None:
        pil = _pil(images) if images is not None else None
        if pil is not None and isinstance(processor, Gemma3Processor):
            pil = [[image] for image in pil]  # Gemma-3 takes images per prompt
        return processor(images=pil, text=list(texts), **kwargs)
    if processor.video_processor is not None:
        clips = [v.cpu() for v in videos]
        rates = set(fps) if isinstance(fps, Sequence) else {fps}
        if len(rates) != 1:
            raise ValueError(f"the video processor takes one frame rate per batch, got {sorted(rates)}")
        return processor(videos=clips, text=list(texts), fps=rates.pop(), **kwargs)
    rows, grids = qwen_patches(processor, [resized_for(processor, v.cpu()) for v in videos])
    features = {"pixel_values_videos": rows, "video_grid_thw": grids}
    merge = processor.image_processor.merge_size**2
    token = processor.video_token
    expanded = []
    for text, grid in zip(texts, features["video_grid_thw"], strict=True):
        n = int(grid.prod()) // merge
        expanded.append(text.replace(token, "<|placeholder|>" * n, 1).replace("<|placeholder|>", token))
    tok = processor.tokenizer
    out = BatchFeature(dict(tok(expanded, padding=True, padding_side=padding_side, return_tensors="pt")))
    out["mm_token_type_ids"] = qwen_token_types(processor, out["input_ids"])
    out.update(features)
    out["second_per_grid_ts"] = seconds_per_grid(processor, fps if isinstance(fps, Sequence) else [fps] * len(videos))
    return out


def qwen_token_types(processor: ProcessorMixin, input_ids: torch.Tensor) -> torch.Tensor:
    """Qwen's ``mm_token_type_ids``: 1 on image placeholders, 2 on video placeholders, 0 elsewhere."""
    types = torch.zeros_like(input_ids)
    types[input_ids == processor.image_token_id] = 1
    types[input_ids == processor.video_token_id] = 2
    return types
