"""Qwen-VL: Qwen2-VL, Qwen2.5-VL (windowed vision attention) and Qwen3-VL (DeepStack): a tower that merges 2x2
patches, images and videos, and M-RoPE positions (time, row, column) in the decoder (``vlmzip.adapters.qwen_vl``).
Only Qwen2.5-VL has a trained fixture."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from transformers import (
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
)

from vlmzip.eval import processing
from vlmzip.eval.families.base import CLIP_NORM, TINY, Family, FixtureFamily, TinyModel, fixture_text_kwargs

if TYPE_CHECKING:
    from vlmzip.eval.fixtures import FixtureSpec

__all__ = ["FAMILY", "qwen2_5_vl_7b"]

# ------------------------------------------------------------------------------------------ tiny models

TINY_IDS: dict[str, int] = {"pad": 0, "bos": 1, "eos": 2, "vision_start": 3, "vision_end": 4, "image": 5, "video": 6}
# M-RoPE sections (temporal, height, width) sum to head_dim / 2 = 8.
_QWEN2_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3]}
_QWEN3_ROPE = {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True}


def _tiny_ids() -> dict[str, int]:
    return {
        "image_token_id": TINY_IDS["image"],
        "video_token_id": TINY_IDS["video"],
        "vision_start_token_id": TINY_IDS["vision_start"],
        "vision_end_token_id": TINY_IDS["vision_end"],
    }


def _tiny_qwen2_vl() -> Qwen2VLConfig:
    """Qwen2-VL tower (patch 14, merge 2); images are 8x8-patch grids ``[1, 8, 8]``."""
    vision = {
        "depth": 2,
        "embed_dim": TINY.vision_hidden,
        "hidden_size": TINY.hidden,
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    text = {**TINY.text_kwargs(TINY_IDS), "rope_parameters": _QWEN2_ROPE}
    return Qwen2VLConfig(text_config=text, vision_config=vision, **_tiny_ids())


def _tiny_qwen2_5_vl() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL tower with windowed attention (window 56 px = 2x2 merged tokens, so 4 windows per image) in
    block 0 and full attention in block 1."""
    vision = {
        "depth": 2,
        "hidden_size": TINY.vision_hidden,
        "intermediate_size": 2 * TINY.vision_hidden,
        "out_hidden_size": TINY.hidden,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,  # 56 / 14 / 2 = 2x2 merged tokens per window -> 4 windows per 8x8 grid
        "fullatt_block_indexes": [1],
    }
    text = {**TINY.text_kwargs(TINY_IDS), "rope_parameters": _QWEN2_ROPE}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_tiny_ids())


def _tiny_qwen3_vl() -> Qwen3VLConfig:
    """Qwen3-VL tower (patch 16, merge 2, DeepStack from vision block 0) on ``[1, 8, 8]``."""
    vision = {
        "depth": 2,
        "hidden_size": TINY.vision_hidden,
        "intermediate_size": 2 * TINY.vision_hidden,
        "out_hidden_size": TINY.hidden,
        "num_heads": 4,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": TINY.qwen_grid * TINY.qwen_grid,
        "deepstack_visual_indexes": [0],
    }
    text = {**TINY.text_kwargs(TINY_IDS), "head_dim": TINY.head_dim, "rope_parameters": _QWEN3_ROPE}
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_tiny_ids())


# -------------------------------------------------------------------------------------------- real size


# Qwen2-7B's and Qwen2.5-7B's decoder sizes (GQA 28/4), as Qwen2.5-VL-7B and LLaVA-OneVision-7B use them
QWEN2_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
}


def qwen2_5_vl_7b() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B: 32-block windowed ViT (full attention in blocks 7, 15, 23, 31), Qwen2.5-7B (GQA 28/4)."""
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    }
    text = {
        **QWEN2_7B,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    }
    return Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )


# ---------------------------------------------------------------------------------------------- fixture


class Qwen2_5_VLFixture(FixtureFamily):
    """Qwen2.5-VL tower (patch 4, merge 2, windows of ``vision_window`` pixels a side): 64 tokens per 64x64
    image; a video of ``F`` frames (padded to even) gives ``F / 2 * 64`` tokens."""

    name = "qwen2_5_vl"
    spec_fields = ("merge", "rope_theta", "vision_window")
    special_tokens = {
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
    }
    image_marker = "<|vision_start|><|image_pad|><|vision_end|>"
    video_marker = "<|vision_start|><|video_pad|><|vision_end|>"
    bos = False

    def visual_tokens(self, spec: FixtureSpec, frames: int = 1) -> int:
        return math.ceil(frames / 2) * (spec.grid // spec.merge) ** 2  # temporal patches of 2 frames

    def config(self, spec: FixtureSpec, vocab_size: int, ids: Mapping[str, int]) -> Qwen2_5_VLConfig:
        if spec.vision_window % (spec.patch_size * spec.merge):  # checked here: only Qwen reads the two fields
            raise ValueError(
                f"FixtureSpec.vision_window={spec.vision_window} must be a multiple of patch_size x merge "
                f"({spec.patch_size * spec.merge}): Qwen's windows are whole merged tokens"
            )
        unit = spec.head_dim // 16  # M-RoPE sections (t, h, w) sum to head_dim / 2, in Qwen's 2:3:3
        sections = [2 * unit, 3 * unit, 3 * unit]
        rope = {"rope_type": "default", "rope_theta": float(spec.rope_theta), "mrope_section": sections}
        vision = {
            "depth": spec.vision_layers,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "out_hidden_size": spec.text_hidden,
            "num_heads": spec.vision_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": spec.merge,
            "temporal_patch_size": 2,
            "window_size": spec.vision_window,
            "fullatt_block_indexes": list(range(spec.vision_layers - 1, -1, -2))[::-1],  # every other, last full
        }
        return Qwen2_5_VLConfig(
            text_config={**fixture_text_kwargs(spec, vocab_size, ids), "rope_parameters": rope},
            vision_config=vision,
            image_token_id=ids["image_token"],
            video_token_id=ids["video_token"],
            vision_start_token_id=ids["vision_start_token"],
            vision_end_token_id=ids["vision_end_token"],
            tie_word_embeddings=True,
        )

    def processor(self, spec: FixtureSpec, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
        side = spec.image_size
        template = tokenizer.chat_template
        qwen = {
            "patch_size": spec.patch_size,
            "merge_size": spec.merge,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": side * side, "longest_edge": side * side},
            **CLIP_NORM,
        }
        image_processor = Qwen2VLImageProcessorPil(**qwen)
        if not processing.HAS_TORCHVISION:
            return processing._QwenImagesOnlyProcessor(image_processor, tokenizer, chat_template=template)
        from transformers import Qwen2VLVideoProcessor  # needs torchvision

        video_processor = Qwen2VLVideoProcessor(**qwen, do_sample_frames=False)
        return Qwen2_5_VLProcessor(image_processor, tokenizer, video_processor, chat_template=template)


FAMILY = Family(
    name="qwen_vl",
    tiny={
        "qwen2_vl": TinyModel(_tiny_qwen2_vl, TINY_IDS),
        "qwen2_5_vl": TinyModel(_tiny_qwen2_5_vl, TINY_IDS),
        "qwen3_vl": TinyModel(_tiny_qwen3_vl, TINY_IDS),
    },
    bench={"qwen2.5-vl-7b": qwen2_5_vl_7b},
    fixture=Qwen2_5_VLFixture(),
)
