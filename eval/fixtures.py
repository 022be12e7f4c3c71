"""Small trainable vision-language fixtures: real transformers classes, word-level tokenizers, synthetic data.

``build(family)`` gives a randomly initialised ``*ForConditionalGeneration`` model of a few million parameters
and the family's *real* processor (LlavaProcessor, Qwen2_5_VLProcessor, Gemma3Processor) with a word-level
tokenizer whose vocabulary is exactly what ``vlmzip.eval.synthetic`` can ask and answer. ``save`` writes
both so that ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained`` load them offline: the
shipped fixtures are ordinary checkpoints, usable by anything that takes a Hugging Face directory, plus the
``FixtureSpec`` they were built from, which ``train(init=...)`` continues from (as saved, or grown deeper:
``deepen`` adds layers that start as the identity).

``train`` fits one on in-memory synthetic batches (word answers and option letters from the first step,
loss on the answer tokens only) with JSONL curves, validation accuracy and resumable checkpoints.

==============  ==================================================================================
``llava``       CLIP tower (64x64, patch 4 -> 16x16 patches + CLS; layer -2, CLS dropped): 256 tokens.
``qwen2_5_vl``  Qwen2.5-VL tower (patch 4, merge 2, windows of 4x4 merged tokens): 64 tokens per image;
                a video of ``F`` frames (padded to even) gives ``F / 2 * 64`` tokens.
``gemma3``      SigLIP tower (64x64, patch 4 -> 16x16 patches, pooled 2x2): 64 tokens per image;
                ``pooled_side=16`` (the shipped one) reads them unpooled: 256.
==============  ==================================================================================

Videos for Qwen go through ``Qwen2VLVideoProcessor`` when torchvision is importable; without it (the CPU
environment) ``encode`` patchifies frames itself in the same layout (``_qwen_patches``), and the
processor is built without a video processor.

CLI: ``python -m vlmzip.eval.fixtures train --family llava --steps N --batch-size B --out DIR [--resume]
[--workers W] [--device cuda] [--init FIXTURE] [--spec FIELD=N ...]`` (see ``docs/fixtures.md`` for the
commands that made the shipped ones).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import inspect
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    CLIPImageProcessorPil,
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from vlmzip.eval import synthetic
from vlmzip.eval.tiny import gemma3_text_config
from vlmzip.registry import adapter_for

__all__ = [
    "FAMILIES",
    "SMALL",
    "SPECS",
    "FixtureSpec",
    "QwenIndex",
    "TrainConfig",
    "build",
    "build_tokenizer",
    "chat_prompt",
    "encode",
    "evaluate",
    "image_side",
    "load_processor",
    "load",
    "main",
    "param_count",
    "save",
    "spec_with",
    "train",
    "training_inputs",
    "vocabulary",
    "visual_tokens",
]

FAMILIES: tuple[str, ...] = ("llava", "qwen2_5_vl", "gemma3")

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
    rope_theta: int = 10_000  # Qwen's M-RoPE base: how fast its row and column sections turn (docs/fixtures.md)
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
_FAMILY_FIELDS = {
    "feature_layer": "llava",
    "merge": "qwen2_5_vl",
    "rope_theta": "qwen2_5_vl",
    "vision_window": "qwen2_5_vl",
    "pooled_side": "gemma3",
    "sliding_window": "gemma3",
    "decoder": "llava",
}


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
    if family == "llava":
        return spec.grid**2
    if family == "gemma3":
        return spec.pooled_side**2
    if family == "qwen2_5_vl":
        return math.ceil(frames / 2) * (spec.grid // spec.merge) ** 2
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


# ------------------------------------------------------------------------------------------- tokenizer

# Every turn marker and placeholder is an added (special) token: never split, never an unknown word.
_COMMON_SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>")
_FAMILY_SPECIALS: dict[str, dict[str, str]] = {
    "llava": {"image_token": "<image>"},
    "qwen2_5_vl": {
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
    },
    "gemma3": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
}
# Words: runs of letters/digits/underscores; every other visible character alone; newlines kept (they are
# part of the official prompt's layout); other whitespace dropped.
_WORD_PATTERN = r"\w+|[^\w\s]|\n"
_SYNTHETIC_SOURCES = ("mc_prompt", "option_lookup", "position_name", "Event", "caption", "video_caption")


def _literal_strings(tree: ast.AST) -> list[str]:
    """String literals (and the literal parts of f-strings) in ``tree``, docstrings excluded."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def vocabulary() -> tuple[str, ...]:
    """Every word synthetic questions, options, answers and the official prompt can contain, sorted.

    Derived rather than listed: the literals of the question families (``q_*``, ``vq_*``), the prompt,
    event phrases and position names, plus the vocabulary constants; so a new question template in
    ``synthetic`` extends the vocabulary by itself (``test_fixtures`` checks a large sample has no unknown).
    """
    source = ast.parse("\n".join(map(inspect.getsource, synthetic.MODULES)))
    texts: list[str] = []
    for node in source.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (
            node.name.startswith(("q_", "vq_")) or node.name in _SYNTHETIC_SOURCES
        ):
            texts += _literal_strings(node)
    texts += [*synthetic.SHAPES, *synthetic.PLURALS.values(), *synthetic.COLOUR_NAMES, *synthetic.SIZES]
    texts += [*synthetic.DIRECTIONS, *synthetic.RELATIONS, *synthetic.LETTERS, "row column"]
    texts += [synthetic.position_name(r, c) for r in range(3) for c in range(3)]
    texts += [str(i) for i in range(100)]  # counts, grid rows/columns
    texts += [*"0123456789", *".,:;?!()'\"-/", "\n", "user assistant system answer question image video"]
    words = {w for text in texts for w in re.findall(_WORD_PATTERN, text)}
    return tuple(sorted(words))


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level ``PreTrainedTokenizerFast``: special tokens first (ids 0..), then ``vocabulary()``.

    No post-processor: BOS (LLaVA, Gemma-3) comes from the chat template, so tokenising a rendered prompt
    never doubles it.
    """
    specials = [*_COMMON_SPECIALS, *_FAMILY_SPECIALS[family].values()]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated"),
        ]
    )
    core.add_special_tokens(specials)  # existing ids; marks them unsplittable and skipped when decoding
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=dict(_FAMILY_SPECIALS[family]),
        padding_side="left",
        model_max_length=8192,
    )
    tok.chat_template = _chat_template(family)
    return tok


def _chat_template(family: str) -> str:
    """Jinja chat template: ``<|role|>\\n content`` turns; assistant turns end with EOS; images and
    videos become the family's placeholder (which the processor expands)."""
    image = {
        "llava": "<image>\n",
        "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
        "gemma3": "<start_of_image>",
    }[family]
    video = "<|vision_start|><|video_pad|><|vision_end|>" if family == "qwen2_5_vl" else image
    bos = "" if family == "qwen2_5_vl" else "{{ bos_token }}"
    return (
        bos + "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}{{% elif c['type'] == 'video' %}}{video}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )


def chat_prompt(processor: ProcessorMixin, text: str, medium: str = "image") -> str:
    """The generation prompt for one image (or video) and ``text``, through the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": medium}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------------------------------------ processors

_HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


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


_CLIP_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _processor(family: str, spec: FixtureSpec, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    """The family's real processor, configured so a ``spec.image_size`` square image is not resized and
    gives ``visual_tokens(family, spec)`` placeholders."""
    side = spec.image_size
    template = tokenizer.chat_template
    if family == "llava":
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **_CLIP_NORM
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    if family == "gemma3":
        image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, **_CLIP_NORM)
        return Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=spec.pooled_side**2,
            chat_template=template,
        )
    if family == "qwen2_5_vl":
        qwen = {
            "patch_size": spec.patch_size,
            "merge_size": spec.merge,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": side * side, "longest_edge": side * side},
            **_CLIP_NORM,
        }
        image_processor = Qwen2VLImageProcessorPil(**qwen)
        if not _HAS_TORCHVISION:
            return _QwenImagesOnlyProcessor(image_processor, tokenizer, chat_template=template)
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(**qwen, do_sample_frames=False)
        return Qwen2_5_VLProcessor(image_processor, tokenizer, video_processor, chat_template=template)
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


# ---------------------------------------------------------------------------------------------- models


def _ids(tokenizer: PreTrainedTokenizerFast, family: str) -> dict[str, int]:
    """Token id of every special token the config must agree on."""
    names = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", **_FAMILY_SPECIALS[family]}
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def _text_kwargs(spec: FixtureSpec, vocab_size: int, ids: dict[str, int]) -> dict:
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


def _vision_kwargs(spec: FixtureSpec) -> dict:
    return {
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
    }


def _gemma3_text(spec: FixtureSpec, text: dict, window: int) -> dict:
    """Gemma-3's decoder: local layers of ``window`` tokens, the last layer global."""
    layers = ["sliding_attention"] * (spec.text_layers - 1) + ["full_attention"]
    return gemma3_text_config(text, spec.head_dim, window, layers)


def _config(family: str, spec: FixtureSpec, vocab_size: int, ids: dict[str, int]):
    text = _text_kwargs(spec, vocab_size, ids)
    if family == "llava":
        # A Gemma-3 decoder's window covers the whole prompt, as the real one's 1,024 tokens cover a LLaVA
        # prompt; the Gemma-3 fixture's 128 would hide most of LLaVA's 256 image tokens from its local layers.
        decoder = (
            _gemma3_text(spec, text, spec.max_positions)
            if spec.decoder == "gemma3_text"
            else {"model_type": "llama", "head_dim": spec.head_dim, **text}
        )
        return LlavaConfig(
            text_config=decoder,
            vision_config={
                "model_type": "clip_vision_model",
                "projection_dim": spec.text_hidden,
                **_vision_kwargs(spec),
            },
            image_token_index=ids["image_token"],
            image_seq_length=visual_tokens(family, spec),
            vision_feature_layer=spec.feature_layer,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            tie_word_embeddings=True,
        )
    if family == "gemma3":
        return Gemma3Config(
            text_config=_gemma3_text(spec, text, spec.sliding_window),
            vision_config={"model_type": "siglip_vision_model", **_vision_kwargs(spec)},
            mm_tokens_per_image=spec.pooled_side**2,
            image_token_index=ids["image_token"],
            boi_token_index=ids["boi_token"],
            eoi_token_index=ids["eoi_token"],
            tie_word_embeddings=True,
        )
    if family == "qwen2_5_vl":
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
            text_config={**text, "rope_parameters": rope},
            vision_config=vision,
            image_token_id=ids["image_token"],
            video_token_id=ids["video_token"],
            vision_start_token_id=ids["vision_start_token"],
            vision_end_token_id=ids["vision_end_token"],
            tie_word_embeddings=True,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def build(family: str, seed: int = 0, spec: FixtureSpec | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random fp32 model of ``family`` and its processor, deterministic in ``seed`` (the global torch RNG
    is left untouched). ``spec`` defaults to ``SPECS[family]``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    spec = spec or SPECS[family]
    tokenizer = build_tokenizer(family)
    processor = _processor(family, spec, tokenizer)
    ids = _ids(tokenizer, family)
    vocab_size = 8 * math.ceil(len(tokenizer) / 8)
    config = _config(family, spec, vocab_size, ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        if family == "gemma3":  # zero-initialised projection: untrained images would all embed to 0
            torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
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


def load_processor(directory: str | Path, model_type: str) -> ProcessorMixin:
    """``AutoProcessor`` from ``directory``, offline; a Qwen2.5-VL processor without its video processor when
    torchvision is missing (``AutoProcessor`` cannot build one then; ``encode`` patchifies videos instead)."""
    if model_type == "qwen2_5_vl" and not _HAS_TORCHVISION:
        return _QwenImagesOnlyProcessor.from_pretrained(directory, local_files_only=True)
    return AutoProcessor.from_pretrained(directory, local_files_only=True)


# ---------------------------------------------------------------------------------------------- growing

# Where a layer of any of the three families' stacks (CLIP and SigLIP towers, Qwen2.5-VL's vision blocks, the
# Llama, Qwen2 and Gemma-3 decoders) writes to its residual stream: zeroed, they make the layer the identity.
_RESIDUAL_WRITERS = ("self_attn.out_proj.", "mlp.fc2.", "attn.proj.", "self_attn.o_proj.", "mlp.down_proj.")
_LAYER_KEY = re.compile(r"^(.*\.(?:layers|blocks))\.(\d+)\.(.*)$")


def _stack_depths(keys) -> dict[str, int]:
    """Layers per stack (the prefix of ``...layers.N.`` / ``...blocks.N.`` keys)."""
    depths: dict[str, int] = {}
    for key in keys:
        if match := _LAYER_KEY.match(key):
            depths[match[1]] = max(depths.get(match[1], 0), int(match[2]) + 1)
    return depths


def check_growth(family: str, old: FixtureSpec, new: FixtureSpec) -> None:
    """Refuse to grow a fixture built from ``old`` into ``new`` where the deeper model would not compute what
    the fixture did (see ``deepen``)."""
    for name in ("vision_layers", "text_layers"):
        if getattr(new, name) < getattr(old, name):
            raise ValueError(
                f"{name}={getattr(new, name)} is fewer than the fixture's {getattr(old, name)}: a fixture can grow, "
                "not shrink"
            )
    added = new.vision_layers - old.vision_layers
    if family == "qwen2_5_vl" and added % 2:
        raise ValueError(
            f"vision_layers={new.vision_layers}: Qwen2.5-VL's vision blocks alternate windowed and full attention, "
            f"so its tower grows by an even number of layers ({old.vision_layers + 2}, {old.vision_layers + 4}, ...)"
        )
    read = old.feature_layer
    kept = -2 <= read < 0 or 0 < read < old.vision_layers  # the layers before the inserted ones, or the last
    if family == "llava" and added and new.feature_layer == read and not kept:
        raise ValueError(
            f"feature_layer={read} would read another layer of the grown tower (new layers go before the last); "
            f"grow a tower read at -1, -2 or 1..{old.vision_layers - 1}, or name the layer with --spec feature_layer"
        )


def deepen(state: dict[str, torch.Tensor], target: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A fixture's weights (``state``) laid out for ``target``, the same fixture with as many or more layers in
    each stack (``check_growth`` says which growths keep its function). Each stack's new layers go before its
    last one and start as the identity, their residual writers zeroed and their other weights as ``target``
    has them, so ``target`` computes what the fixture did and training goes on from there, not from scratch."""
    target_state = target.state_dict()
    old, new = _stack_depths(state), _stack_depths(target_state)
    if old.keys() != new.keys():
        raise ValueError(f"the fixture's layer stacks ({', '.join(old)}) are not {target.config.model_type}'s")
    grown = {}
    for key, value in target_state.items():
        source = key
        if match := _LAYER_KEY.match(key):
            stack, layer, rest = match[1], int(match[2]), match[3]
            if old[stack] - 1 <= layer < new[stack] - 1:  # an added layer (none when the depth is unchanged)
                grown[key] = torch.zeros_like(value) if rest.startswith(_RESIDUAL_WRITERS) else value.clone()
                continue
            if layer == new[stack] - 1:
                source = f"{stack}.{old[stack] - 1}.{rest}"
        if source not in state:
            raise ValueError(f"the fixture has no {source}: it is not {target.config.model_type} or has other sizes")
        grown[key] = state[source]
    return grown


_MLP_MODULE = re.compile(r"^(?:.*\.)?language_model\.layers\.\d+\.mlp$")


def mlp_neuron_scores(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each intermediate neuron of the language model's MLPs carries on ``inputs`` (a batch of the model's
    inputs): the mean magnitude of its activation over every position, times the norm of the ``down_proj``
    column through which it writes to the residual stream. Keyed by MLP module name (the state-dict prefix)."""
    mlps = {name: module for name, module in model.named_modules() if _MLP_MODULE.match(name)}
    means: dict[str, torch.Tensor] = {}  # per MLP: each neuron's mean activation magnitude

    def record(name: str):
        return lambda module, args: means.__setitem__(name, args[0].detach().abs().flatten(0, -2).float().mean(0))

    hooks = [mlp.down_proj.register_forward_pre_hook(record(name)) for name, mlp in mlps.items()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(**inputs)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return {name: (means[name] * mlp.down_proj.weight.detach().float().norm(dim=0)).cpu() for name, mlp in mlps.items()}


def narrow(state: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """``state`` with each scored MLP (``mlp_neuron_scores``) cut to its ``width`` highest-scoring neurons, in
    their order: rows of ``gate_proj`` and ``up_proj``, columns of ``down_proj``. Dropping a neuron that carries
    nothing leaves what the model computes as it was; dropping others changes it, so a run that narrows a fixture
    trains on from there."""
    narrowed = dict(state)
    for name, score in scores.items():
        if width > len(score):
            raise ValueError(f"{name} has {len(score)} neurons: it cannot narrow to {width}")
        keep = score.topk(width).indices.sort().values
        for part, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            key = f"{name}.{part}.weight"
            narrowed[key] = state[key].index_select(dim, keep)
    return narrowed


# ---------------------------------------------------------------------------------------------- inputs


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


def _qwen_grids(processor: ProcessorMixin, frames: Sequence[int]) -> torch.Tensor:
    """``grid_thw`` of clips of ``frames`` frames (an image is one frame) at the fixture's image side."""
    ip = processor.image_processor
    side = image_side(processor) // ip.patch_size
    return torch.tensor([[math.ceil(n / ip.temporal_patch_size), side, side] for n in frames], dtype=torch.long)


def _qwen_patches(processor: ProcessorMixin, clips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
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
    grids = _qwen_grids(processor, [len(clip) for clip in clips])
    starts = [0, *grids.prod(1).cumsum(0).tolist()]  # each clip's first row
    device = clips[0].device
    rows = torch.empty(starts[-1], 3 * tp * p * p, device=device)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(len(clip), []).append(i)
    for length, members in by_length.items():
        frames = _normalise(ip, torch.stack([clips[i] for i in members]))  # [k, T, 3, H, W]
        if length % tp:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, tp - length % tp, -1, -1, -1)], dim=1)
        k, t, h, w = len(members), frames.shape[1] // tp, side // p, side // p
        x = frames.reshape(k, t, tp, 3, h // m, m, p, w // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        at = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in members]).to(device)
        rows[at] = x.reshape(k * t * h * w, 3 * tp * p * p)
    return rows, grids.to(device)


def _normalise(image_processor, images: torch.Tensor) -> torch.Tensor:
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
    rows, grids = _qwen_patches(processor, [resized_for(processor, v.cpu()) for v in videos])
    features = {"pixel_values_videos": rows, "video_grid_thw": grids}
    merge = processor.image_processor.merge_size**2
    token = processor.video_token
    expanded = []
    for text, grid in zip(texts, features["video_grid_thw"], strict=True):
        n = int(grid.prod()) // merge
        expanded.append(text.replace(token, "<|placeholder|>" * n, 1).replace("<|placeholder|>", token))
    tok = processor.tokenizer
    out = BatchFeature(dict(tok(expanded, padding=True, padding_side=padding_side, return_tensors="pt")))
    out["mm_token_type_ids"] = _qwen_token_types(processor, out["input_ids"])
    out.update(features)
    out["second_per_grid_ts"] = _seconds_per_grid(processor, fps if isinstance(fps, Sequence) else [fps] * len(videos))
    return out


def _qwen_token_types(processor: ProcessorMixin, input_ids: torch.Tensor) -> torch.Tensor:
    """Qwen's ``mm_token_type_ids``: 1 on image placeholders, 2 on video placeholders, 0 elsewhere."""
    types = torch.zeros_like(input_ids)
    types[input_ids == processor.image_token_id] = 1
    types[input_ids == processor.video_token_id] = 2
    return types


# -------------------------------------------------------------------------------- training inputs (fast)
#
# The processors work on PIL images one at a time, which makes a 512-example batch take seconds on the host.
# Training builds the same tensors directly: token ids with each placeholder spliced into the span the
# processor would put there, pixels normalised (and, for Qwen, patchified) on the device.
# ``test_fixtures`` checks both halves against ``encode`` on every family.


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


def _tokens(
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
        spans = [_video_expansion(processor, grid) for grid in _qwen_grids(processor, frames)]
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
        out["mm_token_type_ids"] = _qwen_token_types(processor, input_ids)
    elif isinstance(processor, Gemma3Processor):
        out["token_type_ids"] = (input_ids == tok.image_token_id).long()  # the soft tokens, not <start_of_image>
    return out


_CLIP_FPS = 2.0  # training clips' frame rate: Qwen's temporal positions follow it


def _seconds_per_grid(processor: ProcessorMixin, fps: Sequence[float]) -> torch.Tensor:
    """Qwen's ``second_per_grid_ts`` of clips at frame rates ``fps``: seconds per temporal patch."""
    return processor.image_processor.temporal_patch_size / torch.tensor(fps, dtype=torch.float32)


def _pixels(
    processor: ProcessorMixin, images: torch.Tensor | None = None, videos: Sequence[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The processor's pixel tensors for uint8 images ``[B, 3, H, W]`` or videos ``[T, 3, H, W]``, computed
    on the device the pixels are on."""
    if isinstance(processor, Qwen2_5_VLProcessor):
        if videos is not None:
            rows, grids = _qwen_patches(processor, videos)
            seconds = _seconds_per_grid(processor, [_CLIP_FPS] * len(videos)).to(rows.device)
            return {"pixel_values_videos": rows, "video_grid_thw": grids, "second_per_grid_ts": seconds}
        rows, grids = _qwen_patches(processor, [image[None] for image in images])
        return {"pixel_values": rows, "image_grid_thw": grids}
    if videos is not None:
        raise ValueError(f"{type(processor).__name__} fixtures take images, not videos")
    return {"pixel_values": _normalise(processor.image_processor, images)}


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
    return BatchFeature({**_tokens(processor, prompts, answers, medium, frames), **_pixels(processor, images, videos)})


# -------------------------------------------------------------------------------------------- training


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


def _scene_side(processor: ProcessorMixin, cfg: TrainConfig) -> int:
    """The side training and validation scenes are rendered at: ``cfg.scene_size``, or the processor's."""
    return cfg.scene_size or image_side(processor)


def step_examples(processor: ProcessorMixin, cfg: TrainConfig, step: int) -> dict:
    """The CPU half of step ``step``'s batch: token tensors and uint8 ``images`` (or a list of ``videos``), of
    scenes rendered at ``cfg.scene_size`` (0: the processor's side) and resized to the processor's side as it
    would resize them."""
    rng = _step_rng(cfg, step)
    size = _scene_side(processor, cfg)
    if cfg.is_video_step(step):
        n = cfg.video_batch_size or max(1, cfg.batch_size // 4)
        clips, items = [], []
        for difficulty, k in _difficulties(cfg, "video", step, n, rng):
            vb = synthetic.video_batch(k, rng, difficulty, split="train", size=size)
            clips += vb.videos
            items += [(synthetic.video_caption(tl), qs[0]) for tl, qs in zip(vb.timelines, vb.questions)]
        prompts, answers = _examples(items, "video", rng, cfg)
        clips = [resized_for(processor, clip) for clip in clips]
        return {**_tokens(processor, prompts, answers, "video", [len(c) for c in clips]), "videos": clips}
    images, items = [], []
    for difficulty, k in _difficulties(cfg, "image", step, cfg.batch_size, rng):
        ib = synthetic.image_batch(k, rng, difficulty, split="train", size=size)
        images.append(ib.images)
        items += [(synthetic.caption(scene), q) for scene, q in zip(ib.scenes, ib.questions)]
    prompts, answers = _examples(items, "image", rng, cfg)
    return {**_tokens(processor, prompts, answers, "image"), "images": resized_for(processor, torch.cat(images))}


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
        grids = _qwen_grids(processor, frames)
        seconds = _seconds_per_grid(processor, [_CLIP_FPS] * len(frames)) if medium == "video" else None
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


class _Stream(torch.utils.data.IterableDataset):
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
# batch: ~1.5 s a step on an H200); a backend whose name contains "flash" gets the whole packed sequence and
# ``cu_seqlens`` instead. Training registers this one, which runs every equal-length chunk in one sdpa call.
_PACKED_ATTENTION = "vlmzip_fixture_flash_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Block-diagonal attention over a packed ``[1, H, S, D]`` sequence split by ``cu_seq_lens_q``; returns
    ``[1, S, H, D]`` as flash-attention backends do. Equal chunks (same-size images, frames, windows) run as
    one batch, found without a host synchronisation when ``max_length_q`` is given; otherwise chunk by chunk."""
    bounds = kwargs["cu_seq_lens_q"]
    _, heads, total, dim = query.shape
    sdpa = torch.nn.functional.scaled_dot_product_attention
    n, longest = len(bounds) - 1, kwargs.get("max_length_q")
    if longest is None or n * longest != total:  # n chunks of at most `longest` filling `total`: all equal
        lengths = bounds.diff().tolist()
        longest = lengths[0] if len(set(lengths)) == 1 else None
    if longest is not None:
        q, k, v = (t.reshape(heads, n, longest, dim).transpose(0, 1) for t in (query, key, value))
        out = sdpa(q, k, v, scale=scaling, dropout_p=dropout).transpose(1, 2).reshape(1, total, heads, dim)
        return out, None
    chunks = [
        sdpa(q, k, v, scale=scaling, dropout_p=dropout)
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))
    ]
    return torch.cat(chunks, dim=2).transpose(1, 2), None


@contextlib.contextmanager
def _packed_vision_attention(model: PreTrainedModel):
    """Qwen fixtures train with ``packed_sdpa`` in the vision tower; the saved model keeps its own backend."""
    if model.config.model_type != "qwen2_5_vl":
        yield
        return
    backend = model.config.vision_config._attn_implementation
    AttentionInterface.register(_PACKED_ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(_PACKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation({"vision_config": _PACKED_ATTENTION})
    try:
        yield
    finally:
        model.set_attn_implementation({"vision_config": backend})


def _loss(model: PreTrainedModel, inputs: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-token cross-entropy averaged per example, then over the batch (a caption weighs as much as a
    one-word answer), and the fraction of examples whose answer tokens are all argmax-right."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")[:, 1:]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(**inputs).logits[:, :-1].float()
    mask = labels != -100
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    loss = ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    exact = ((logits.argmax(-1) == labels) | ~mask).all(1).float().mean()  # a tensor, read only when logged
    return loss, exact


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    n: int,
    seed: int = 0,
    level: int = -1,
    split: str = "validation",
    size: int | None = None,
    medium: str = "image",
    batch_size: int = 32,
) -> dict[str, float]:
    """Greedy accuracy on ``n`` fixed ``split`` questions of ``IMAGE_CURRICULUM[level]`` (or the video
    curriculum): ``letter`` for the official prompt (first generated token), ``word`` for the bare question
    (whole decoded answer)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = size or image_side(processor)
    rng = synthetic.split_rng(seed, medium, split)
    letter = word = 0
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        if medium == "video":
            vb = synthetic.video_batch(k, rng, synthetic.VIDEO_CURRICULUM[level], split=split, size=size)
            questions, visual = [qs[0] for qs in vb.questions], {"videos": vb.videos}
        else:
            ib = synthetic.image_batch(k, rng, synthetic.IMAGE_CURRICULUM[level], split=split, size=size)
            questions, visual = list(ib.questions), {"images": ib.images}
        for kind in ("letter", "word"):
            texts = [
                chat_prompt(processor, synthetic.mc_prompt(q, medium) if kind == "letter" else q.text, medium)
                for q in questions
            ]
            inputs = encode(processor, texts, **visual).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model.generate(**inputs, max_new_tokens=1 if kind == "letter" else 6, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]
            decoded = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            for q, d in zip(questions, decoded, strict=True):
                if kind == "letter":
                    letter += d.strip() == q.answer
                else:
                    word += " ".join(d.split()) == q.answer_word
    model.train(was_training)
    return {"letter": letter / n, "word": word / n}


def image_side(processor: ProcessorMixin) -> int:
    """The square image side the processor is configured for (Qwen: from its pixel budget)."""
    size = processor.image_processor.size
    if size.get("longest_edge"):
        return math.isqrt(int(size["longest_edge"]))
    return int(size.get("height") or size["shortest_edge"])


def _lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _param_groups(model: PreTrainedModel, cfg: TrainConfig) -> list[dict]:
    """The vision tower (as vlmzip's adapter names it) and everything else, each with its share of the learning
    rate: Qwen2.5-VL leaves its text-only optimum sooner with a faster vision tower (``docs/fixtures.md``)."""
    tower = {id(p) for p in adapter_for(model).vision_tower.parameters()}
    vision = [p for p in model.parameters() if id(p) in tower]
    rest = [p for p in model.parameters() if id(p) not in tower]
    return [{"params": vision, "scale": (cfg.vision_lr or cfg.lr) / cfg.lr}, {"params": rest, "scale": 1.0}]


def _checkpoint(out_dir: Path) -> Path:
    return out_dir / "checkpoint.pt"


def train(
    family: str,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    out_dir: str | Path = "fixture",
    resume: bool = False,
    spec: FixtureSpec | None = None,
    **options,
) -> PreTrainedModel:
    """Train a fixture of ``family`` for ``steps`` optimizer steps (total, counting resumed ones).

    ``out_dir`` receives ``log.jsonl`` (one line per ``log_every`` steps and per evaluation: greedy accuracy
    on the validation split at the last curriculum level, images and, for Qwen, videos), ``checkpoint.pt``
    (model, optimizer and step, every ``checkpoint_every`` steps and at the end: ``resume=True`` continues from
    it) and, at the end, the fixture itself (``save``) in ``out_dir/model``. ``spec`` defaults to the one the
    ``init`` fixture was saved with, else ``SPECS[family]``. ``options`` are further ``TrainConfig`` fields.
    Returns the trained model (fp32).
    """
    cfg = TrainConfig(family, steps, batch_size, lr, **options)
    return _fit(cfg, _run_spec(cfg, spec), device, out_dir, resume)


def _run_spec(cfg: TrainConfig, spec: FixtureSpec | None = None, changes: Sequence[str] = ()) -> FixtureSpec:
    """The spec a run of ``cfg`` trains: ``spec`` (default: the one its ``init`` fixture was saved with, else the
    family's) with ``changes`` (``FIELD=N``, see ``spec_with``). A continuation ``check_continuation`` refuses
    raises ``ValueError`` here, before anything is built."""
    saved = saved_spec(cfg.init) if cfg.init else None
    spec = spec_with(cfg.family, spec or saved or SPECS[cfg.family], changes)
    if saved:
        check_continuation(cfg.family, saved, spec, cfg.init)
    return spec


def _fit(
    cfg: TrainConfig, spec: FixtureSpec, device: str | torch.device, out_dir: str | Path, resume: bool = False
) -> PreTrainedModel:
    """``train``'s run of ``cfg`` on a model of ``spec``, which ``_run_spec`` returned for it."""
    family = cfg.family
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = build(family, cfg.seed, spec)
    if cfg.init:
        model.load_state_dict(_init_state(cfg, model, device))
    model.to(device).train()
    groups = _param_groups(model, cfg)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98), fused=fused)
    step = 0
    if resume and _checkpoint(out_dir).exists():
        state = torch.load(_checkpoint(out_dir), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        if 0 < cfg.stop_at <= step:
            raise ValueError(
                f"stop_at={cfg.stop_at}: the checkpoint in {out_dir} is at step {step} already; resume with a "
                f"later stop_at, or none (0) to run on to steps={cfg.steps}"
            )
    (out_dir / "config.json").write_text(json.dumps({"train": asdict(cfg), "spec": asdict(spec)}, indent=2) + "\n")
    scenes = _scene_side(processor, cfg)  # validation scenes, as the loader's training scenes
    loader = torch.utils.data.DataLoader(
        _Stream(processor, cfg, step, QwenIndex(model.config) if family == "qwen2_5_vl" else None),
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
    )
    started = time.time()
    # Qwen logs `video_every` consecutive steps each time, so image and video losses both appear.
    logged_run = cfg.video_every if family == "qwen2_5_vl" and cfg.video_every > 1 else 1
    mode = "a" if step else "w"  # a resumed run continues its log; a new one in an old directory starts afresh
    with (out_dir / "log.jsonl").open(mode, encoding="utf-8") as log, _packed_vision_attention(model):
        for step, batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, cfg) * group["scale"]
            loss, exact = _loss(model, _on_device(processor, batch, device), device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if torch.isfinite(norm):  # a non-finite gradient would turn every weight into NaN: skip the batch
                optimizer.step()
            else:
                _write(log, {"step": step + 1, "skipped": f"non-finite gradient norm {norm.item()}"})
            done = step + 1
            elapsed = time.time() - started
            stopped = ""  # why the run ends before `steps`; a time limit is not reproducible, a step is
            if cfg.max_minutes > 0 and elapsed > 60 * cfg.max_minutes:
                stopped = f"max_minutes={cfg.max_minutes} reached"
            elif done == cfg.stop_at:
                stopped = f"stop_at={cfg.stop_at} reached"
            last = done == cfg.steps or bool(stopped)
            if done % cfg.log_every < logged_run or last:
                kind = "video" if "videos" in batch else "image"
                record = {"step": done, "loss": round(loss.item(), 5), "exact": exact.item(), "lr": _lr(step, cfg)}
                _write(log, {**record, "kind": kind, "elapsed_s": round(elapsed, 2)})
            if cfg.eval_every and (done % cfg.eval_every == 0 or last):
                for medium in ("image", "video") if family == "qwen2_5_vl" and cfg.video_every else ("image",):
                    levels = cfg.levels(medium)
                    where = {"level": levels[1], "size": scenes, "medium": medium, "batch_size": 128}
                    try:
                        acc = evaluate(model, processor, cfg.eval_size, cfg.seed, **where)
                    except Exception as error:  # an evaluation bug must not throw away the training run
                        acc = {"error": f"{type(error).__name__}: {error}"}
                    _write(log, {"step": done, "eval": medium, "level": levels[1], **acc})
            if done % cfg.checkpoint_every == 0 or last:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}
                torch.save(state, _checkpoint(out_dir))
            if stopped:
                _write(log, {"step": done, "stopped": stopped})
                break
    save(model, processor, out_dir / "model", spec)
    return model


# What a continued fixture may change of the spec it was saved with: the fields that keep its weights' shapes,
# the depths it can grow to, and the width its language model's MLPs can narrow to (a smaller fixture to ship).
_CHANGEABLE = ("feature_layer", "rope_theta", "pooled_side", "sliding_window", "vision_window")
_GROWABLE = ("vision_layers", "text_layers")
_NARROWABLE = ("text_intermediate",)
# Every family reads image_size, but only Qwen2.5-VL's tower has no position table sized by it (its rotary
# positions follow the patch grid), so only a continued Qwen2.5-VL fixture may read larger images; CLIP's and
# SigLIP's learned positions fix theirs.
_CHANGEABLE_BY_FAMILY = {"qwen2_5_vl": ("image_size",)}


def check_continuation(family: str, saved: FixtureSpec, spec: FixtureSpec, directory: str | Path) -> None:
    """Refuse to continue the fixture in ``directory``, saved from ``saved``, as a run of ``spec`` that changes
    its architecture (sizes, decoder) or grows it in a way ``check_growth`` refuses."""
    changeable = _CHANGEABLE + _CHANGEABLE_BY_FAMILY.get(family, ())
    changed = [
        f"{f.name} {getattr(saved, f.name)} -> {getattr(spec, f.name)}"
        for f in fields(FixtureSpec)
        if f.name not in changeable + _GROWABLE + _NARROWABLE and getattr(saved, f.name) != getattr(spec, f.name)
    ]
    if changed:
        raise ValueError(
            f"--init {directory} cannot continue with {', '.join(changed)}: a continued fixture keeps its "
            f"architecture; it can change {', '.join(changeable)}, grow ({', '.join(_GROWABLE)}) and narrow "
            f"({', '.join(_NARROWABLE)})"
        )
    check_growth(family, saved, spec)
    if spec.text_intermediate > saved.text_intermediate:
        raise ValueError(
            f"text_intermediate={spec.text_intermediate} is more than the fixture's {saved.text_intermediate}: its "
            "MLPs can narrow (keeping the neurons that carry the most), not widen"
        )


def _init_state(cfg: TrainConfig, model: PreTrainedModel, device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of the fixture ``cfg.init`` for ``model``: narrowed where its MLPs are narrower, scored on the
    run's first batch, and grown where it is deeper (``_run_spec`` checked both)."""
    weights, processor = load(cfg.init)
    state = {k: v.float() for k, v in weights.state_dict().items()}
    width = model.config.get_text_config().intermediate_size
    if width < weights.config.get_text_config().intermediate_size:
        inputs = _on_device(processor, step_examples(processor, cfg, 0), device)
        inputs.pop("labels")
        state = narrow(state, mlp_neuron_scores(weights.float().to(device), inputs), width)
    return deepen(state, model)


def _on_device(processor: ProcessorMixin, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch on ``device`` with its pixels made there."""
    tensors = {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
        if k not in ("images", "videos")
    }
    if "videos" in batch:
        return {**tensors, **_pixels(processor, videos=[v.to(device, non_blocking=True) for v in batch["videos"]])}
    return {**tensors, **_pixels(processor, images=batch["images"].to(device, non_blocking=True))}


def _write(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    print(json.dumps(record), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.eval.fixtures", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a fixture on synthetic data")
    t.add_argument("--family", required=True, choices=FAMILIES)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="peak (docs/fixtures.md: each shipped round's)")
    t.add_argument("--vision-lr", type=float, default=0.0, help="the vision tower's peak learning rate (default: --lr)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    t.add_argument("--eval-size", type=int, default=TrainConfig.eval_size)
    t.add_argument("--video-batch-size", type=int, default=0, help="Qwen video batches (0: batch size / 4)")
    t.add_argument("--video-every", type=int, default=TrainConfig.video_every, help="Qwen: every n-th step (0: none)")
    t.add_argument("--workers", type=int, default=0, help="data-loader processes")
    t.add_argument("--max-minutes", type=float, default=0.0, help="stop early, saving everything, after this long")
    t.add_argument(
        "--stop-at",
        type=int,
        default=0,
        help="stop early, saving everything, after this step (on the schedule of --steps)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--scene-size",
        type=int,
        default=0,
        help="render the scenes at this side and resize them as the processor does (default: the image size)",
    )
    t.add_argument(
        "--init",
        default="",
        help="start from this saved fixture (new optimizer and schedule) and the spec it was saved with",
    )
    t.add_argument("--image-levels", type=int, nargs=2, default=TrainConfig.image_levels, metavar=("LO", "HI"))
    t.add_argument("--video-levels", type=int, nargs=2, default=TrainConfig.video_levels, metavar=("LO", "HI"))
    t.add_argument("--curriculum-fraction", type=float, default=TrainConfig.curriculum_fraction)
    t.add_argument("--caption-fraction", type=float, default=TrainConfig.caption_fraction)
    t.add_argument("--word-fraction", type=float, default=TrainConfig.word_fraction)
    t.add_argument(
        "--lookup-fraction",
        type=float,
        default=TrainConfig.lookup_fraction,
        help="multiple-choice prompts asking which option is the answer (teaches matching an answer to its option)",
    )
    t.add_argument(
        "--focus-families",
        nargs="+",
        default=[],
        metavar="FAMILY",
        help="question families (image, or Qwen's video) that --focus-fraction of each batch's top-level half "
        "asks alone",
    )
    t.add_argument("--focus-fraction", type=float, default=TrainConfig.focus_fraction)
    t.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    t.add_argument("--small", action="store_true", help="use the SMALL spec (CPU smoke runs)")
    t.add_argument(
        "--spec",
        nargs="+",
        default=[],
        metavar="FIELD=N",
        help="change fields of the run's FixtureSpec (the default, SMALL or --init's): sizes, LLaVA's "
        "feature_layer, Qwen's rope_theta; e.g. --spec vision_layers=6 (with --init: grown, the new layers "
        "starting as the identity)",
    )
    b = sub.add_parser("build", help="save an untrained fixture")
    b.add_argument("--family", required=True, choices=FAMILIES)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build":
        model, processor = build(args.family, args.seed)
        save(model, processor, args.out, SPECS[args.family])
        print(json.dumps({"family": args.family, "params": param_count(model), "out": str(args.out)}))
        return 0
    if args.init and args.small:
        parser.error(
            "--small and --init: a continued fixture keeps the spec it was saved with (change fields with --spec)"
        )
    try:  # every error the arguments can cause, as a usage error before anything is built
        # every TrainConfig field the command line has, by name (nargs lists as the tuples TrainConfig holds)
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
        cfg = TrainConfig(**{name: tuple(v) if isinstance(v, list) else v for name, v in given.items()})
        spec = _run_spec(cfg, SMALL if args.small else None, args.spec)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    _fit(cfg, spec, args.device, args.out, args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
