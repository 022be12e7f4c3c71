"""LLaVA: a CLIP tower read at one of its layers, [CLS] dropped, projected into a decoder: Llama's (LLaVA-1.5) or
Gemma-3's (as the llava-gemma checkpoints and the shipped fixture) (``vlmzip.adapters.llava``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from vlmzip.eval.families import gemma3
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

__all__ = ["FAMILY", "llava_15_7b"]

# ------------------------------------------------------------------------------------------ tiny models

TINY_IDS: dict[str, int] = {"pad": 0, "bos": 1, "eos": 2, "image": 3}


def _tiny_config(text: dict | None = None) -> LlavaConfig:
    """CLIP tower (8x8 image, patch 2 -> 16 patches + CLS; feature layer -2, CLS dropped) with ``text`` as its
    language model's config (default: Llama's)."""
    vision = {**TINY.vision_kwargs("clip_vision_model", 8), "projection_dim": TINY.vision_hidden}
    text = text or {"model_type": "llama", "head_dim": TINY.head_dim, **TINY.text_kwargs(TINY_IDS)}
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=TINY_IDS["image"],
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_gemma3_config() -> LlavaConfig:
    """The same LLaVA on Gemma-3's text model, its text layers as the tiny ``gemma3``'s."""
    return _tiny_config(gemma3.tiny_text(TINY_IDS))


# -------------------------------------------------------------------------------------------- real size


def llava_15_7b() -> LlavaConfig:
    """LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 patches, feature layer -2) and Vicuna-7B (Llama-2-7B)."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


# ---------------------------------------------------------------------------------------------- fixture


class LlavaFixture(FixtureFamily):
    """CLIP tower (64x64, patch 4 -> 16x16 patches + CLS; layer ``feature_layer``, CLS dropped): 256 tokens."""

    name = "llava"
    spec_fields = ("feature_layer", "decoder")
    special_tokens = {"image_token": "<image>"}
    image_marker = "<image>\n"

    def visual_tokens(self, spec: FixtureSpec, frames: int = 1) -> int:
        return spec.grid**2

    def config(self, spec: FixtureSpec, vocab_size: int, ids: Mapping[str, int]) -> LlavaConfig:
        text = fixture_text_kwargs(spec, vocab_size, ids)
        # A Gemma-3 decoder's window covers the whole prompt, as the real one's 1,024 tokens cover a LLaVA
        # prompt; the Gemma-3 fixture's 128 would hide most of LLaVA's 256 image tokens from its local layers.
        decoder = (
            gemma3.fixture_text(spec, text, spec.max_positions)
            if spec.decoder == "gemma3_text"
            else {"model_type": "llama", "head_dim": spec.head_dim, **text}
        )
        return LlavaConfig(
            text_config=decoder,
            vision_config={
                "model_type": "clip_vision_model",
                "projection_dim": spec.text_hidden,
                **fixture_vision_kwargs(spec),
            },
            image_token_index=ids["image_token"],
            image_seq_length=self.visual_tokens(spec),
            vision_feature_layer=spec.feature_layer,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            tie_word_embeddings=True,
        )

    def processor(self, spec: FixtureSpec, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
        side = spec.image_size
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **CLIP_NORM
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=tokenizer.chat_template,
        )


FAMILY = Family(
    name="llava",
    tiny={"llava": TinyModel(_tiny_config, TINY_IDS), "llava_gemma3": TinyModel(_tiny_gemma3_config, TINY_IDS)},
    bench={"llava-1.5-7b": llava_15_7b},
    fixture=LlavaFixture(),
)
