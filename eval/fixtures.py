"""Small trainable vision-language fixtures: real transformers classes, word-level tokenizers, synthetic data.

``build(family)`` gives a randomly initialised ``*ForConditionalGeneration`` model of a few million parameters
and the family's *real* processor (LlavaProcessor, Qwen2_5_VLProcessor, Gemma3Processor) with a word-level
tokenizer whose vocabulary is exactly what ``vlmzip.eval.synthetic`` can ask and answer. ``save`` writes
both so that ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained`` load them offline: the
shipped fixtures are ordinary checkpoints, usable by anything that takes a Hugging Face directory.

``train`` fits one on in-memory synthetic batches (word answers and option letters from the first step,
loss on the answer tokens only) with JSONL curves, validation accuracy and resumable checkpoints.

==============  ==================================================================================
``llava``       CLIP tower (64x64, patch 4 -> 16x16 patches + CLS; layer -2, CLS dropped): 256 tokens.
``qwen2_5_vl``  Qwen2.5-VL tower (patch 4, merge 2, windows of 4x4 merged tokens): 64 tokens per image;
                a video of ``F`` frames (padded to even) gives ``F / 2 * 64`` tokens.
``gemma3``      SigLIP tower (64x64, patch 4 -> 16x16 patches, pooled 2x2): 64 tokens per image.
==============  ==================================================================================

Videos for Qwen go through ``Qwen2VLVideoProcessor`` when torchvision is importable; without it (the CPU
environment) ``encode`` patchifies frames itself in the same layout (``_qwen_video_features``), and the
processor is built without a video processor.

CLI: ``python -m vlmzip.eval.fixtures train --family llava --steps N --batch-size B --out DIR [--resume]``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import inspect
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
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
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)

from vlmzip.eval import synthetic

__all__ = [
    "FAMILIES",
    "SMALL",
    "SPECS",
    "FixtureSpec",
    "TrainConfig",
    "build",
    "build_tokenizer",
    "chat_prompt",
    "encode",
    "evaluate",
    "load",
    "main",
    "param_count",
    "save",
    "train",
    "training_inputs",
    "vocabulary",
    "visual_tokens",
]

FAMILIES: tuple[str, ...] = ("llava", "qwen2_5_vl", "gemma3")

# ----------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class FixtureSpec:
    """Sizes of one fixture. The defaults give ~2.5M parameters (~5 MB in bf16) and 64-256 visual tokens
    per 64x64 image: big enough to learn the synthetic tasks, small enough to ship in the repository."""

    image_size: int = 64
    patch_size: int = 4
    vision_layers: int = 4
    vision_hidden: int = 128
    vision_heads: int = 4
    vision_intermediate: int = 256
    text_layers: int = 4
    text_hidden: int = 256
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    merge: int = 2  # Qwen spatial merge
    pooled_side: int = 8  # Gemma-3 pooled grid side: mm_tokens_per_image = pooled_side ** 2
    sliding_window: int = 128  # Gemma-3 local layers
    max_positions: int = 4096

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
)


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
_SYNTHETIC_SOURCES = ("mc_prompt", "position_name", "Event")


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
    source = ast.parse(inspect.getsource(synthetic))
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


def _config(family: str, spec: FixtureSpec, vocab_size: int, ids: dict[str, int]):
    text = _text_kwargs(spec, vocab_size, ids)
    if family == "llava":
        return LlavaConfig(
            text_config={"model_type": "llama", "head_dim": spec.head_dim, **text},
            vision_config={
                "model_type": "clip_vision_model",
                "projection_dim": spec.text_hidden,
                **_vision_kwargs(spec),
            },
            image_token_index=ids["image_token"],
            image_seq_length=visual_tokens(family, spec),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            tie_word_embeddings=True,
        )
    if family == "gemma3":
        layers = ["sliding_attention"] * (spec.text_layers - 1) + ["full_attention"]
        gemma_text = {
            **text,
            "head_dim": spec.head_dim,
            "query_pre_attn_scalar": spec.head_dim,
            "sliding_window": spec.sliding_window,
            "layer_types": layers,
        }
        return Gemma3Config(
            text_config=gemma_text,
            vision_config={"model_type": "siglip_vision_model", **_vision_kwargs(spec)},
            mm_tokens_per_image=spec.pooled_side**2,
            image_token_index=ids["image_token"],
            boi_token_index=ids["boi_token"],
            eoi_token_index=ids["eoi_token"],
            tie_word_embeddings=True,
        )
    if family == "qwen2_5_vl":
        unit = spec.head_dim // 16  # M-RoPE sections (t, h, w) sum to head_dim / 2, in Qwen's 2:3:3
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2 * unit, 3 * unit, 3 * unit]}
        vision = {
            "depth": spec.vision_layers,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "out_hidden_size": spec.text_hidden,
            "num_heads": spec.vision_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": spec.merge,
            "temporal_patch_size": 2,
            "window_size": spec.image_size // 2,  # 2x2 windows per image
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


def save(
    model: PreTrainedModel, processor: ProcessorMixin, directory: str | Path, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write ``model`` (safetensors, ``dtype``) and ``processor`` to ``directory``; the model is not modified."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(dtype).save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    for path in directory.glob("*config.json"):  # record the real class, not the torchvision-free stand-in
        text = path.read_text(encoding="utf-8")
        if _QwenImagesOnlyProcessor.__name__ in text:
            path.write_text(text.replace(_QwenImagesOnlyProcessor.__name__, "Qwen2_5_VLProcessor"), encoding="utf-8")
    return directory


def load(directory: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` from ``directory``, offline. Qwen fixtures in an
    environment without torchvision load their processor without the video processor (see ``encode``)."""
    model = AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True)
    if model.config.model_type == "qwen2_5_vl" and not _HAS_TORCHVISION:
        return model, _QwenImagesOnlyProcessor.from_pretrained(directory, local_files_only=True)
    return model, AutoProcessor.from_pretrained(directory, local_files_only=True)


# ---------------------------------------------------------------------------------------------- inputs


def _pil(images: torch.Tensor) -> list:
    """uint8 ``[B, 3, H, W]`` tensors -> PIL images (what the *Pil image processors take)."""
    from PIL import Image

    return [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).cpu().numpy()]


def _qwen_video_features(processor: ProcessorMixin, videos: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2-VL video patches without torchvision: frames (padded to a multiple of the temporal patch by
    repeating the last) rescaled, normalised and flattened exactly as ``Qwen2VLVideoProcessor`` lays them out:
    rows ``(t, h/m, w/m, m, m)``, columns ``(C, tp, p, p)``."""
    ip = processor.image_processor
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    side = _image_side(processor)
    rows, grids = [], []
    for video in videos:
        if tuple(video.shape[-2:]) != (side, side):  # no resize here: render at the fixture's size
            raise ValueError(f"video frames must be {side}x{side}, got {tuple(video.shape[-2:])}")
        frames = video.cpu().float() * ip.rescale_factor
        frames = (frames - mean) / std
        if len(frames) % tp:
            frames = torch.cat([frames, frames[-1:].expand(tp - len(frames) % tp, -1, -1, -1)])
        t, c, h, w = len(frames) // tp, 3, frames.shape[2] // p, frames.shape[3] // p
        x = frames.reshape(t, tp, c, h // m, m, p, w // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        rows.append(x.reshape(t * h * w, c * tp * p * p))
        grids.append([t, h, w])
    return {"pixel_values_videos": torch.cat(rows), "video_grid_thw": torch.tensor(grids, dtype=torch.long)}


def encode(
    processor: ProcessorMixin,
    texts: Sequence[str],
    images: torch.Tensor | None = None,
    videos: Sequence[torch.Tensor] | None = None,
    padding_side: str = "left",
) -> BatchFeature:
    """Processor inputs for chat-templated ``texts`` with one image (uint8 ``[B, 3, H, W]``) or one video
    (uint8 ``[T, 3, H, W]`` each) per text. Qwen videos without a video processor are patchified here and
    their placeholders expanded the way ``Qwen2_5_VLProcessor`` would."""
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
        return processor(videos=clips, text=list(texts), fps=[2.0] * len(clips), **kwargs)
    features = _qwen_video_features(processor, videos)
    merge = processor.image_processor.merge_size**2
    token = processor.video_token
    expanded = []
    for text, grid in zip(texts, features["video_grid_thw"], strict=True):
        n = int(grid.prod()) // merge
        expanded.append(text.replace(token, "<|placeholder|>" * n, 1).replace("<|placeholder|>", token))
    tok = processor.tokenizer
    out = BatchFeature(dict(tok(expanded, padding=True, padding_side=padding_side, return_tensors="pt")))
    types = torch.zeros_like(out["input_ids"])
    types[out["input_ids"] == processor.image_token_id] = 1
    types[out["input_ids"] == processor.video_token_id] = 2
    out["mm_token_type_ids"] = types
    out.update(features)
    out["second_per_grid_ts"] = torch.full((len(videos),), processor.image_processor.temporal_patch_size / 2.0)
    return out


# -------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``image_levels`` / ``video_levels`` index ``synthetic.IMAGE_CURRICULUM`` /
    ``VIDEO_CURRICULUM``; the level rises linearly over the steps (``curriculum_fraction`` of them), so
    early steps see one object per scene. ``word_fraction`` of the examples ask the bare question and are
    answered with the word; the rest are the official multiple-choice prompt answered with the letter:
    training both from the start avoids the hundreds of steps a later switch costs."""

    family: str
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    seed: int = 0
    image_levels: tuple[int, int] = (0, len(synthetic.IMAGE_CURRICULUM) - 1)
    video_levels: tuple[int, int] = (0, len(synthetic.VIDEO_CURRICULUM) - 1)
    curriculum_fraction: float = 0.7
    word_fraction: float = 0.5
    video_every: int = 2  # Qwen: every n-th step is a video batch (0: images only)
    eval_every: int = 200
    eval_size: int = 64
    checkpoint_every: int = 200
    log_every: int = 10
    grad_clip: float = 1.0


def _level(levels: tuple[int, int], step: int, cfg: TrainConfig) -> int:
    lo, hi = levels
    span = max(1, int(cfg.steps * cfg.curriculum_fraction))
    return min(hi, lo + (hi - lo + 1) * step // span)


def _examples(
    questions: Sequence[synthetic.Question], medium: str, rng: np.random.Generator, word_fraction: float
) -> tuple[list[str], list[str]]:
    """(prompt text, answer) per question: the bare question -> word, or the official prompt -> letter."""
    prompts, answers = [], []
    for q in questions:
        if rng.random() < word_fraction:
            prompts.append(q.text)
            answers.append(q.answer_word)
        else:
            prompts.append(synthetic.mc_prompt(q, medium))
            answers.append(q.answer)
    return prompts, answers


def training_inputs(
    processor: ProcessorMixin,
    prompts: Sequence[str],
    answers: Sequence[str],
    medium: str,
    images: torch.Tensor | None = None,
    videos: Sequence[torch.Tensor] | None = None,
) -> BatchFeature:
    """Right-padded inputs of prompt + answer + EOS with ``labels`` on the answer and EOS tokens only.

    The tokenizer is word-level and context free, so the answer's tokens are the last ``len(answer ids)``
    non-pad tokens of each row."""
    tok = processor.tokenizer
    texts = [chat_prompt(processor, p, medium) + a + tok.eos_token for p, a in zip(prompts, answers, strict=True)]
    inputs = encode(processor, texts, images, videos, padding_side="right")
    labels = torch.full_like(inputs["input_ids"], -100)
    lengths = inputs["attention_mask"].sum(1)
    for i, answer in enumerate(answers):
        n = len(tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"])
        end = int(lengths[i])
        labels[i, end - n : end] = inputs["input_ids"][i, end - n : end]
    inputs["labels"] = labels
    return inputs


def _sample(
    processor: ProcessorMixin,
    cfg: TrainConfig,
    step: int,
    rng: np.random.Generator,
    size: int,
    device: torch.device,
) -> BatchFeature:
    """The training batch of ``step``: images, or (Qwen, every ``video_every``-th step) videos."""
    video = isinstance(processor, Qwen2_5_VLProcessor) and cfg.video_every and step % cfg.video_every == 1
    if video:
        level = synthetic.VIDEO_CURRICULUM[_level(cfg.video_levels, step, cfg)]
        vb = synthetic.video_batch(cfg.batch_size, rng, level, split="train", size=size)
        prompts, answers = _examples([qs[0] for qs in vb.questions], "video", rng, cfg.word_fraction)
        inputs = training_inputs(processor, prompts, answers, "video", videos=vb.videos)
    else:
        level = synthetic.IMAGE_CURRICULUM[_level(cfg.image_levels, step, cfg)]
        ib = synthetic.image_batch(cfg.batch_size, rng, level, split="train", size=size)
        prompts, answers = _examples(ib.questions, "image", rng, cfg.word_fraction)
        inputs = training_inputs(processor, prompts, answers, "image", images=ib.images)
    return inputs.to(device)


def _loss(model: PreTrainedModel, inputs: BatchFeature, device: torch.device) -> tuple[torch.Tensor, float]:
    """Mean answer-token cross-entropy and the fraction of examples whose answer tokens are all argmax-right."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(**inputs)
    labels = inputs["labels"][:, 1:]
    predicted = out.logits[:, :-1].argmax(-1)
    mask = labels != -100
    exact = ((predicted == labels) | ~mask).all(1).float().mean().item()
    return out.loss, exact


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
    size = (
        size
        or processor.image_processor.size.get("height")
        or int(math.isqrt(processor.image_processor.size["longest_edge"]))
    )
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


def _image_side(processor: ProcessorMixin) -> int:
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
    eval_every: int = 200,
    spec: FixtureSpec | None = None,
    **options,
) -> PreTrainedModel:
    """Train a fixture of ``family`` for ``steps`` optimizer steps (total, counting resumed ones).

    ``out_dir`` receives ``log.jsonl`` (one line per ``log_every`` steps and per evaluation), ``checkpoint.pt``
    (model, optimizer, data RNG and step, every ``checkpoint_every`` steps and at the end: ``resume=True``
    continues from it) and, at the end, the fixture itself (``save``) in ``out_dir/model``. ``options`` are
    further ``TrainConfig`` fields. Returns the trained model (fp32).
    """
    cfg = TrainConfig(family, steps, batch_size, lr, eval_every=eval_every, **options)
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or SPECS[family]
    model, processor = build(family, cfg.seed, spec)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = synthetic.split_rng(cfg.seed, "image", "train")
    step = 0
    if resume and _checkpoint(out_dir).exists():
        state = torch.load(_checkpoint(out_dir), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step = state["step"]
    (out_dir / "config.json").write_text(json.dumps({"train": asdict(cfg), "spec": asdict(spec)}, indent=2) + "\n")
    log = (out_dir / "log.jsonl").open("a", encoding="utf-8")
    started = time.time()
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        inputs = _sample(processor, cfg, step, rng, spec.image_size, device)
        loss, exact = _loss(model, inputs, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            kind = "video" if "pixel_values_videos" in inputs else "image"
            record = {"step": step, "loss": loss.item(), "exact": exact, "lr": _lr(step - 1, cfg), "kind": kind}
            _write(log, {**record, "elapsed_s": round(time.time() - started, 2)})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            level = _level(cfg.image_levels, step - 1, cfg)
            acc = evaluate(model, processor, cfg.eval_size, cfg.seed, level, size=spec.image_size)
            _write(log, {"step": step, "eval": "image", "level": level, **acc})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            torch.save({**state, "rng": rng.bit_generator.state}, _checkpoint(out_dir))
    log.close()
    save(model, processor, out_dir / "model")
    return model


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
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--eval-every", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--small", action="store_true", help="use the SMALL spec (CPU smoke runs)")
    b = sub.add_parser("build", help="save an untrained fixture")
    b.add_argument("--family", required=True, choices=FAMILIES)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build":
        model, processor = build(args.family, args.seed)
        save(model, processor, args.out)
        print(json.dumps({"family": args.family, "params": param_count(model), "out": str(args.out)}))
        return 0
    spec = replace(SMALL) if args.small else None
    train(
        args.family,
        args.steps,
        args.batch_size,
        args.lr,
        args.device,
        args.out,
        resume=args.resume,
        eval_every=args.eval_every,
        spec=spec,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
