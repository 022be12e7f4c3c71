"""Gemma-3: a SigLIP tower pooled to a square grid of tokens, bidirectional attention inside the image block,
and a decoder of sliding-window layers with a global one (``vlmzip.adapters.gemma3``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import (
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from vlmzip.eval.families.base import (
    CLIP_NORM,
    TINY,
    Family,
    FixtureFamily,
    TinyModel,
    fixture_text_kwargs,
    fixture_vision_kwargs,
)

if TYPE_CHECKING:
    from vlmzip.eval.fixtures import FixtureSpec

__all__ = ["FAMILY", "gemma3_text_config", "gemma_3_4b"]


def gemma3_text_config(text: dict, head_dim: int, window: int, layer_types: Sequence[str]) -> dict:
    """Gemma-3's text-model config from a decoder's ``text`` kwargs (sizes, special ids): queries scaled by
    ``head_dim`` as the released models' are, ``sliding_attention`` layers seeing the last ``window`` tokens.
    The tiny test models and the trained fixtures (``vlmzip.eval.fixtures``), Gemma-3's and LLaVA's on Gemma-3's
    decoder, all build theirs with it."""
    return {
        **text,
        "model_type": "gemma3_text",
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": window,
        "layer_types": list(layer_types),
    }


def _init_projection(model: PreTrainedModel) -> None:
    """Gemma-3 zero-initialises its image projection, which would make every image embed to 0."""
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=TINY.init_std)


# ------------------------------------------------------------------------------------------ tiny models

TINY_IDS: dict[str, int] = {"pad": 0, "eos": 1, "bos": 2, "boi": 3, "eoi": 4, "image": 5}


def tiny_text(ids: Mapping[str, int]) -> dict:
    """A tiny Gemma-3 text model: two sliding layers of window 8, a full one and a sliding one, so a prompt's
    image is outside some layers' window."""
    layers = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    return gemma3_text_config(TINY.text_kwargs(ids), TINY.head_dim, 8, layers)


def _tiny_config() -> Gemma3Config:
    """SigLIP tower (16x16 image, patch 2 -> 8x8 patches, pooled 2x2 -> 16 tokens)."""
    vision = TINY.vision_kwargs("siglip_vision_model", 16)
    return Gemma3Config(
        text_config=tiny_text(TINY_IDS),
        vision_config=vision,
        mm_tokens_per_image=16,
        image_token_index=TINY_IDS["image"],
        boi_token_index=TINY_IDS["boi"],
        eoi_token_index=TINY_IDS["eoi"],
        initializer_range=TINY.init_std,
    )


# -------------------------------------------------------------------------------------------- real size


def gemma_3_4b() -> Gemma3Config:
    """Gemma-3-4B: SigLIP so400m at 896 px (64x64 patches pooled to 256 tokens), 34 layers, 5 of 6 sliding."""
    vision = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 896,
        "patch_size": 14,
    }
    text = {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "sliding_window": 1024,
        "vocab_size": 262208,
        "query_pre_attn_scalar": 256,
    }
    return Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=256)


# ---------------------------------------------------------------------------------------------- fixture


def fixture_text(spec: FixtureSpec, text: dict, window: int) -> dict:
    """A fixture's Gemma-3 decoder: local layers of ``window`` tokens, the last layer global."""
    layers = ["sliding_attention"] * (spec.text_layers - 1) + ["full_attention"]
    return gemma3_text_config(text, spec.head_dim, window, layers)


class Gemma3Fixture(FixtureFamily):
    """SigLIP tower (64x64, patch 4 -> 16x16 patches, pooled to ``pooled_side`` a side: 8, 64 tokens, by default;
    16, the shipped one, reads them unpooled: 256)."""

    name = "gemma3"
    spec_fields = ("pooled_side", "sliding_window")
    special_tokens = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    image_marker = "<start_of_image>"

    def visual_tokens(self, spec: FixtureSpec, frames: int = 1) -> int:
        return spec.pooled_side**2

    def config(self, spec: FixtureSpec, vocab_size: int, ids: Mapping[str, int]) -> Gemma3Config:
        return Gemma3Config(
            text_config=fixture_text(spec, fixture_text_kwargs(spec, vocab_size, ids), spec.sliding_window),
            vision_config={"model_type": "siglip_vision_model", **fixture_vision_kwargs(spec)},
            mm_tokens_per_image=spec.pooled_side**2,
            image_token_index=ids["image_token"],
            boi_token_index=ids["boi_token"],
            eoi_token_index=ids["eoi_token"],
            tie_word_embeddings=True,
        )

    def processor(self, spec: FixtureSpec, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
        side = spec.image_size
        image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, **CLIP_NORM)
        return Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=spec.pooled_side**2,
            chat_template=tokenizer.chat_template,
        )

    def init_weights(self, model: PreTrainedModel) -> None:
        _init_projection(model)


FAMILY = Family(
    name="gemma3",
    tiny={"gemma3": TinyModel(_tiny_config, TINY_IDS, _init_projection)},
    bench={"gemma-3-4b": gemma_3_4b},
    fixture=Gemma3Fixture(),
)
