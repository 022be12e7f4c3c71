"""What a model family tells the rest of ``vlmzip.eval``: its tiny test models, its real-size benchmark
architectures and, where it has one, how its trained fixture is built.

A family is one module of ``vlmzip.eval.families`` (``llava``, ``qwen_vl``, ``gemma3``, as ``vlmzip.adapters``),
which registers one ``Family``; ``tiny``, ``bench``, ``fixtures`` and ``bundled`` read their lists of models from
the registry, so a new family is one new module here plus its adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

if TYPE_CHECKING:  # the spec is only read here; vlmzip.eval.fixtures imports this package
    from vlmzip.eval.fixtures import FixtureSpec

__all__ = ["FixtureFamily", "Family", "TinyModel", "TINY"]


# ------------------------------------------------------------------------------------------ tiny models


@dataclass(frozen=True)
class _TinySizes:
    """Sizes every tiny test model shares (``vlmzip.eval.tiny``): a fraction of a second to build on the CPU."""

    vocab: int = 256
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    layers: int = 4
    vision_hidden: int = 32
    qwen_grid: int = 8  # patches per side of a Qwen image or video frame: 8x8 patches -> 4x4 = 16 tokens
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def vision_kwargs(self, model_type: str, image_size: int) -> dict:
        """A tiny CLIP or SigLIP tower's config kwargs: two layers at patch 2."""
        return {
            "model_type": model_type,
            "image_size": image_size,
            "patch_size": 2,
            "hidden_size": self.vision_hidden,
            "intermediate_size": 2 * self.vision_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }

    def text_kwargs(self, ids: Mapping[str, int]) -> dict:
        """A tiny language model's config kwargs, with the special ``ids`` (pad, bos, eos) of its family."""
        return {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": 2 * self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": 1024,
            "initializer_range": self.init_std,
            "pad_token_id": ids["pad"],
            "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"],
        }


TINY = _TinySizes()


@dataclass(frozen=True)
class TinyModel:
    """One tiny test model: its config builder and the special ids (all inside the vocabulary, at its bottom)
    that the config names and ``tiny.random_inputs`` lays out."""

    config: Callable[[], PreTrainedConfig]
    special_ids: Mapping[str, int]
    # what the family's random initialisation leaves unusable (run on the new model, under its seed)
    init_weights: Callable[[PreTrainedModel], None] | None = None


# ---------------------------------------------------------------------------------------------- fixtures


class FixtureFamily:
    """How a family's trained fixture is built from a ``FixtureSpec`` (``vlmzip.eval.fixtures``): its config, its
    real processor, its placeholder tokens and how many visual tokens an image or clip gives. ``name`` is the
    model type, the fixture's name in ``bundled`` and the ``--family`` of the trainer."""

    name: str = ""
    # FixtureSpec fields that only this family's model reads (``spec_with`` refuses them for the others)
    spec_fields: tuple[str, ...] = ()
    # Its processor's special tokens, by the attribute name the processor and the tokenizer know them by
    special_tokens: Mapping[str, str] = {}
    image_marker: str = ""  # what the chat template writes for an image (the processor expands it)
    video_marker: str = ""  # and for a video ("": the image's)
    bos: bool = True  # whether the chat template starts with BOS

    def visual_tokens(self, spec: FixtureSpec, frames: int = 1) -> int:
        """Visual placeholder tokens the processor inserts for one image (``frames=1``) or one video."""
        raise NotImplementedError

    def config(self, spec: FixtureSpec, vocab_size: int, ids: Mapping[str, int]) -> PreTrainedConfig:
        """The model's config; ``ids`` maps pad, bos, eos and every ``special_tokens`` key to its token id."""
        raise NotImplementedError

    def processor(self, spec: FixtureSpec, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
        """The family's real processor, configured so a ``spec.image_size`` square image is not resized and
        gives ``visual_tokens(spec)`` placeholders."""
        raise NotImplementedError

    def init_weights(self, model: PreTrainedModel) -> None:
        """Fix what the family's random initialisation leaves unusable for training (default: nothing)."""


def fixture_text_kwargs(spec: FixtureSpec, vocab_size: int, ids: Mapping[str, int]) -> dict:
    """A fixture's language-model config kwargs (every family's decoder takes these)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": spec.max_positions,
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "tie_word_embeddings": True,
    }


def fixture_vision_kwargs(spec: FixtureSpec) -> dict:
    """A fixture's CLIP or SigLIP tower config kwargs."""
    return {
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
    }


# The fixtures' image processors normalise as CLIP's original processor did.
CLIP_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


# ---------------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """One model family: its tiny test models (name -> ``TinyModel``), its real-size benchmark architectures
    (``vlmzip bench --arch`` name -> config builder) and its trained fixture, if it has one."""

    name: str
    tiny: Mapping[str, TinyModel] = field(default_factory=dict)
    bench: Mapping[str, Callable[[], PreTrainedConfig]] = field(default_factory=dict)
    fixture: FixtureFamily | None = None
