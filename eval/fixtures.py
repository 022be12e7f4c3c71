"""Small trainable vision-language fixtures: real transformers classes, word-level tokenizers, synthetic data.

``build(family)`` gives a randomly initialised ``*ForConditionalGeneration`` model of a few million parameters
and the family's *real* processor (LlavaProcessor, Qwen2_5_VLProcessor, Gemma3Processor) with a word-level
tokenizer whose vocabulary is exactly what ``vlmzip.eval.synthetic`` can ask and answer (``tokenizer``). ``save``
writes both so that ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained`` load them offline: the
shipped fixtures are ordinary checkpoints, usable by anything that takes a Hugging Face directory, plus the
``FixtureSpec`` they were built from (``saved_spec``). ``encode`` (``processing``) turns chat prompts and uint8
images or clips into the model's inputs.

==============  ==================================================================================
``llava``       CLIP tower (64x64, patch 4 -> 16x16 patches + CLS; layer -2, CLS dropped): 256 tokens.
``qwen2_5_vl``  Qwen2.5-VL tower (patch 4, merge 2, windows of 4x4 merged tokens): 64 tokens per image;
                a video of ``F`` frames (padded to even) gives ``F / 2 * 64`` tokens.
``gemma3``      SigLIP tower (64x64, patch 4 -> 16x16 patches, pooled 2x2): 64 tokens per image;
                ``pooled_side=16`` (the shipped one) reads them unpooled: 256.
==============  ==================================================================================

Each family's config and processor are built by its module in ``vlmzip.eval.families``. The fixtures are trained
by ``training/`` at the repository's root (not installed): ``training/README.md`` has the commands that made the
shipped ones.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from vlmzip.eval.families import fixture_families, fixture_family
from vlmzip.eval.processing import (
    HAS_TORCHVISION,
    _QwenImagesOnlyProcessor,
    encode,
    image_side,
    load_processor,
    resized_for,
)
from vlmzip.eval.tokenizer import build_tokenizer, chat_prompt, special_tokens, vocabulary

__all__ = [
    "FAMILIES",
    "HAS_TORCHVISION",
    "SMALL",
    "SPECS",
    "FixtureSpec",
    "build",
    "build_tokenizer",
    "chat_prompt",
    "encode",
    "image_side",
    "load_processor",
    "load",
    "param_count",
    "resized_for",
    "save",
    "saved_spec",
    "spec_with",
    "vocabulary",
    "visual_tokens",
]

FAMILIES: tuple[str, ...] = tuple(fixture_families())  # ("llava", "qwen2_5_vl", "gemma3")

# ----------------------------------------------------------------------------------------------- sizes

LLAVA_DECODERS = ("llama", "gemma3_text")  # the model_type of a LLaVA fixture's language model


@dataclass(frozen=True)
class FixtureSpec:
    """Sizes of one fixture (and the few other settings its config takes). The defaults give 2.7-3.1 M parameters
    (5.3-5.9 MiB in bf16; ``text_intermediate=256`` takes 0.39 M off) and 64-256 visual tokens per 64x64 image:
    big enough to learn the synthetic tasks, small enough to ship in the repository."""

    image_size: int = 64
    patch_size: int = 4
    vision_layers: int = 4
    vision_hidden: int = 128
    vision_heads: int = 4
    vision_intermediate: int = 256
    feature_layer: int = -2  # LLaVA's vision_feature_layer: the vision layer whose output the projector reads
    text_layers: int = 4
    text_hidden: int = 256
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    merge: int = 2  # Qwen spatial merge
    rope_theta: int = 10_000  # Qwen's M-RoPE base: how fast its row and column sections turn (training/README.md)
    # Qwen's vision attention windows, pixels a side: 4 x 4 merged tokens, as the real model's 112 at patch 14. A
    # fixed size in pixels, as there, so a larger image has more windows, not larger ones.
    vision_window: int = 32
    pooled_side: int = 8  # Gemma-3 pooled grid side: mm_tokens_per_image = pooled_side ** 2
    sliding_window: int = 128  # Gemma-3 local layers
    max_positions: int = 4096
    decoder: str = "llama"  # LLaVA's language model: LLaVA-1.5's Llama, or Gemma-3's (as llava-gemma checkpoints)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and f.name != "feature_layer" and value < 1:
                raise ValueError(f"FixtureSpec.{f.name}={value} must be >= 1")
        if self.decoder not in LLAVA_DECODERS:
            raise ValueError(f"FixtureSpec.decoder={self.decoder!r}: choose one of {', '.join(LLAVA_DECODERS)}")
        if not -self.vision_layers - 1 <= self.feature_layer <= self.vision_layers:
            raise ValueError(
                f"FixtureSpec.feature_layer={self.feature_layer} names no output of {self.vision_layers} vision "
                f"layers ({-self.vision_layers - 1}: the embeddings, -1 or {self.vision_layers}: the last layer)"
            )
        if self.feature_layer == 0:  # transformers asks the tower for hidden states only if the layer is truthy
            raise ValueError(
                f"FixtureSpec.feature_layer=0: LLaVA in transformers cannot read layer 0; name the embeddings "
                f"{-self.vision_layers - 1}"
            )

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.text_hidden // self.text_heads


SPECS: dict[str, FixtureSpec] = {family: FixtureSpec() for family in FAMILIES}
# For CPU tests: one layer of everything, 32x32 images (64 / 16 / 16 visual tokens).
SMALL = FixtureSpec(
    image_size=32,
    vision_layers=1,
    vision_hidden=32,
    vision_heads=2,
    vision_intermediate=64,
    text_layers=2,
    text_hidden=64,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=128,
    pooled_side=4,
    sliding_window=32,
    vision_window=16,
)

# Fields that only one family's model reads.
_FAMILY_FIELDS = {name: family for family, fixture in fixture_families().items() for name in fixture.spec_fields}


def spec_with(family: str, spec: FixtureSpec, changes: Sequence[str]) -> FixtureSpec:
    """``spec`` with ``FIELD=N`` changes for a ``family`` model (integers, but for LLaVA's ``decoder``, a name);
    a field the family's model does not read is refused rather than ignored."""
    names = {f.name for f in fields(FixtureSpec)}
    values = {}
    for change in changes:
        name, sep, value = change.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--spec {change!r}: expected FIELD=N with FIELD one of {', '.join(sorted(names))}")
        if _FAMILY_FIELDS.get(name, family) != family:
            raise ValueError(f"--spec {change!r}: only {_FAMILY_FIELDS[name]} models read {name}, not {family}")
        if isinstance(getattr(spec, name), str):
            values[name] = value  # FixtureSpec names the choices if it is not one
            continue
        try:
            values[name] = int(value)
        except ValueError:
            raise ValueError(f"--spec {change!r}: {name} takes an integer, not {value!r}") from None
    return replace(spec, **values)


def visual_tokens(family: str, spec: FixtureSpec, frames: int = 1) -> int:
    """Visual placeholder tokens the processor inserts for one image (``frames=1``) or one Qwen video."""
    return fixture_family(family).visual_tokens(spec, frames)


# ---------------------------------------------------------------------------------------------- models


def build(family: str, seed: int = 0, spec: FixtureSpec | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random fp32 model of ``family`` and its processor, deterministic in ``seed`` (the global torch RNG
    is left untouched). ``spec`` defaults to ``SPECS[family]``."""
    fixture = fixture_family(family)
    spec = spec or SPECS[family]
    tokenizer = build_tokenizer(family)
    processor = fixture.processor(spec, tokenizer)
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in special_tokens(family).items()}
    vocab_size = 8 * math.ceil(len(tokenizer) / 8)
    config = fixture.config(spec, vocab_size, ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        fixture.init_weights(model)
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id, generation.eos_token_id = ids["pad"], ids["bos"], ids["eos"]
    generation.do_sample = False
    generation.max_new_tokens = 8
    return model, processor


def param_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


SPEC_FILE = "fixture_spec.json"


def save(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    directory: str | Path,
    spec: FixtureSpec,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write ``model`` (safetensors, ``dtype``), ``processor`` and the ``spec`` it was built from (``SPEC_FILE``,
    which ``saved_spec`` reads back to continue training it) to ``directory``; the model is not modified."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    copy.deepcopy(model).to(dtype).save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    for path in directory.glob("*config.json"):  # record the real class, not the torchvision-free stand-in
        text = path.read_text(encoding="utf-8")
        if _QwenImagesOnlyProcessor.__name__ in text:
            path.write_text(text.replace(_QwenImagesOnlyProcessor.__name__, "Qwen2_5_VLProcessor"), encoding="utf-8")
    return directory


def saved_spec(directory: str | Path) -> FixtureSpec:
    """The spec a fixture saved by ``save`` was built from."""
    path = Path(directory) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: {directory} was not saved by vlmzip.eval.fixtures.save, so the spec it was built "
            "from is unknown (write one there: the FixtureSpec fields as JSON)"
        )
    return FixtureSpec(**json.loads(path.read_text(encoding="utf-8")))


def load(directory: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` from ``directory``, offline. Qwen fixtures in an
    environment without torchvision load their processor without the video processor (see ``encode``)."""
    model = AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True)
    return model, load_processor(directory, model.config.model_type)
