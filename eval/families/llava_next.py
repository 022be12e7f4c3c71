"""LLaVA-NeXT and LLaVA-OneVision: LLaVA's projector on "anyres" images (a base view plus a stitched, unpadded grid of
crops, a newline token ending each row), CLIP with [CLS] (NeXT) or SigLIP (OneVision, with videos pooled 2x2 and
``anyres_max`` resampling) (``vlmzip.adapters.llava_next``, ``llava_onevision``). No trained fixture: the LLaVA
fixture's weights cannot stand in for these layouts (docs/fidelity.md)."""

from __future__ import annotations

from transformers import LlavaNextConfig, LlavaOnevisionConfig, Qwen2Config

from vlmzip.eval.families.base import TINY, Family, TinyModel
from vlmzip.eval.families.llava import llava_15_7b
from vlmzip.eval.families.qwen_vl import QWEN2_7B

__all__ = ["FAMILY", "image_sizes", "llava_next_7b", "llava_onevision_7b"]

# ------------------------------------------------------------------------------------------ tiny models

TINY_IDS: dict[str, int] = {"pad": 0, "bos": 1, "eos": 2, "image": 3}
TINY_ONEVISION_IDS: dict[str, int] = {**TINY_IDS, "video": 4}
# an image of 8x16 pixels is two crops side by side; the tower sees 8x8 pixels at patch 2: 4x4 = 16 tokens a view
_TINY_PINPOINTS = [[8, 16], [16, 8]]


def _tiny_next() -> LlavaNextConfig:
    """CLIP tower (8x8 crops, patch 2 -> 16 patches + CLS; feature layer -2, CLS dropped), Llama text model."""
    return LlavaNextConfig(
        text_config={"model_type": "llama", "head_dim": TINY.head_dim, **TINY.text_kwargs(TINY_IDS)},
        vision_config={**TINY.vision_kwargs("clip_vision_model", 8), "projection_dim": TINY.vision_hidden},
        image_token_index=TINY_IDS["image"],
        image_grid_pinpoints=_TINY_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_onevision() -> LlavaOnevisionConfig:
    """SigLIP tower (8x8 crops, patch 2 -> 16 patches; video frames pooled to 2x2 = 4 tokens), Qwen2 text model."""
    return LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **TINY.text_kwargs(TINY_IDS)},
        vision_config=TINY.vision_kwargs("siglip_vision_model", 8),
        image_token_index=TINY_IDS["image"],
        video_token_index=TINY_ONEVISION_IDS["video"],
        image_grid_pinpoints=_TINY_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


def image_sizes(config: LlavaNextConfig | LlavaOnevisionConfig, count: int) -> list[tuple[int, int]]:
    """``(height, width)`` of a sample's ``count`` images in ``tiny.random_inputs``: in turn two tower inputs side by
    side, one and a half (unpadded to 3/4 of its two crops' grid) and two stacked."""
    side = config.vision_config.image_size
    shapes = [(side, 2 * side), (side, 3 * side // 2), (2 * side, side)]
    return [shapes[index % len(shapes)] for index in range(count)]


# -------------------------------------------------------------------------------------------- real size


def llava_next_7b() -> LlavaNextConfig:
    """LLaVA-NeXT-Vicuna-7B: LLaVA-1.5-7B's CLIP ViT-L/14 at 336 px (feature layer -2) and Vicuna-7B, on anyres grids
    up to 2x2 or 1x3 crops."""
    llava = llava_15_7b()
    return LlavaNextConfig(
        vision_config=llava.vision_config,
        text_config=llava.text_config,
        image_token_index=32000,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_onevision_7b() -> LlavaOnevisionConfig:
    """LLaVA-OneVision-Qwen2-7B: SigLIP so400m/14 at 384 px (26 layers, all read), anyres_max_9 on grids of up to
    6x6 crops, videos pooled 2x2 (196 tokens a frame), Qwen2-7B."""
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 26,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
    }
    text = Qwen2Config(
        **QWEN2_7B,
        vocab_size=152128,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    pinpoints = [[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)]
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=151646,
        video_token_index=151647,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


FAMILY = Family(
    name="llava_next",
    tiny={
        "llava_next": TinyModel(_tiny_next, TINY_IDS),
        "llava_onevision": TinyModel(_tiny_onevision, TINY_ONEVISION_IDS),
    },
    bench={"llava-next-7b": llava_next_7b, "llava-onevision-7b": llava_onevision_7b},
)
