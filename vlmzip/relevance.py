"""How relevant each visual token is to the sample's question: the relevance term of ``text-relevance`` and
``cdpruner``.

With ``clip=PATH`` an OpenCLIP model the user keeps on disk scores it: its text tower embeds the question (the
``"text"`` signal), its vision tower embeds the item's frames (the ``"image"`` signal, resized to the CLIP's input
and normalised its way), the final patch tokens go through its ``ln_post`` and ``proj`` into the joint space and
are average-pooled to the model's token grid, and a token's relevance is the cosine of its pooled embedding with the
question's (TRIM, arXiv:2409.10994; CDPruner's relevance term, arXiv:2506.10967). Without a CLIP the language
model's own embeddings stand in: a token's relevance is the mean cosine of its features with the sample's text
token embeddings (``"text_embeddings"``).

open_clip is optional (``pip install 'vlmzip[openclip]'``) and imported only when a policy names a CLIP; a CLIP is
loaded offline from a directory in open_clip's own layout (``open_clip_config.json`` and the weights, as open_clip's
hub repositories hold them), never downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vlmzip.errors import PolicyError
from vlmzip.stages import ModelInfo, VisionMethod, VisualItem
from vlmzip.stages.method import optional

OPENCLIP_INSTALL = "pip install 'vlmzip[openclip]'"
CONFIG_NAME = "open_clip_config.json"
_WEIGHTS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


@dataclass(frozen=True)
class Clip:
    """An OpenCLIP model loaded for scoring: the model (eval mode), its tokenizer (``list[str] -> [B, L]`` ids), its
    input size ``(height, width)`` and the mean and std its image preprocessing normalises with."""

    model: nn.Module
    tokenizer: Any
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def clip_directory(method: str, path: str) -> Path:
    """The directory of the OpenCLIP model ``path`` names (that directory, or its ``open_clip_config.json``);
    ``PolicyError`` naming the fix for anything else (a hub name, a missing path)."""
    where = Path(path).expanduser()
    if where.is_file() and where.name == CONFIG_NAME:
        where = where.parent
    if where.is_dir() and (where / CONFIG_NAME).is_file():
        return where
    hub = path.startswith(("hf-hub:", "hf://")) or (not where.exists() and path.count("/") <= 1)
    reason = "looks like a hub name" if hub else "does not exist" if not where.exists() else f"has no {CONFIG_NAME}"
    raise PolicyError(
        f"{method}: clip={path!r} {reason}; vlmzip loads an OpenCLIP model offline from a local directory holding "
        f"{CONFIG_NAME} and its weights (the layout of open_clip's hub repositories: fetch one yourself, e.g. "
        "`hf download laion/CLIP-ViT-B-16-laion2B-s34B-b88K --local-dir DIR`, then give clip=DIR)"
    )


def load_clip(method: str, path: str) -> Clip:
    """The OpenCLIP model in directory ``path`` (``clip_directory``), on the CPU in fp32; ``PolicyError`` where
    open_clip is not importable or the directory cannot be loaded from offline."""
    directory = clip_directory(method, path)
    config = json.loads((directory / CONFIG_NAME).read_text()).get("model_cfg", {})
    _check_offline(method, directory, config)
    try:
        import open_clip
    except Exception as error:  # ImportError, or a torchvision built for another torch (RuntimeError)
        raise PolicyError(
            f"{method}: clip={path!r} needs open_clip_torch, which cannot be imported here ({type(error).__name__}: "
            f"{error}); install it with `{OPENCLIP_INSTALL}` (with a torchvision built for this torch), or drop clip= "
            "to score by the language model's own text embeddings"
        ) from None
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=True).eval()
    visual = model.visual
    preprocess = getattr(visual, "preprocess_cfg", {}) or {}
    return Clip(
        model,
        open_clip.get_tokenizer(f"local-dir:{directory}"),
        _pair(visual.image_size),
        tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
    )


def _check_offline(method: str, directory: Path, config: dict[str, Any]) -> None:
    """Refuse what open_clip would fetch from the hub or what has no patch tokens to score."""
    if not any(next(directory.glob(pattern), None) for pattern in _WEIGHTS):
        raise PolicyError(
            f"{method}: {directory} holds {CONFIG_NAME} but no weights (*.safetensors, *.bin, *.pth); a CLIP "
            "without its weights would score at random: put its checkpoint beside the config"
        )
    text, vision = config.get("text_cfg", {}), config.get("vision_cfg", {})
    hub_text = text.get("hf_model_name")
    if hub_text and not Path(hub_text).is_dir():
        raise PolicyError(
            f"{method}: the CLIP in {directory} has a Hugging Face text tower ({hub_text!r}) that open_clip would "
            "fetch from the hub; vlmzip loads CLIP offline: set text_cfg.hf_model_name to a local directory holding it"
        )
    if vision.get("timm_model_name") or vision.get("attentional_pool"):
        raise PolicyError(
            f"{method}: the CLIP in {directory} has a timm or attention-pooled vision tower; vlmzip reads patch "
            "embeddings from open_clip's own ViT towers (ViT-B-16, ViT-L-14, ...): use one of those"
        )


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def clip_relevance(clip: Clip, items: list[VisualItem]) -> list[torch.Tensor]:
    """Each item's relevance ``[n]`` (fp32): the cosine of its tokens' pooled CLIP patch embeddings with its
    question's CLIP text embedding. One vision forward per frame size and one text forward for all the items."""
    visual = clip.model.visual
    device, dtype = visual.proj.device, visual.proj.dtype
    texts = sorted({item.signals["text"] for item in items})
    with torch.no_grad():
        embedded = clip.model.encode_text(clip.tokenizer(texts).to(device))
    question = dict(zip(texts, F.normalize(embedded.float(), dim=-1)))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for order, item in enumerate(items):
        by_shape.setdefault(tuple(item.signals["image"].shape[1:]), []).append(order)
    scores: list[torch.Tensor | None] = [None] * len(items)
    for members in by_shape.values():
        frames = torch.cat([items[i].signals["image"] for i in members]).to(device, torch.float32)
        with torch.no_grad():
            patches = patch_embeddings(clip, frames.to(dtype))
        for i, maps in zip(members, patches.split([len(items[i].signals["image"]) for i in members])):
            tokens = pool_to_grid(maps, items[i].grid)
            scores[i] = F.normalize(tokens, dim=-1) @ question[items[i].signals["text"]]
    return scores


def patch_embeddings(clip: Clip, frames: torch.Tensor) -> torch.Tensor:
    """Frames ``[F, 3, H, W]`` in ``[0, 1]`` -> the CLIP's final patch tokens in its joint embedding space,
    ``[F, E, rows, cols]`` (its patch grid) in fp32: resized to its input (the whole frame, so that patches keep
    their place), normalised its way, through its ``ln_post`` and ``proj``."""
    visual = clip.model.visual
    x = F.interpolate(frames.float(), size=clip.image_size, mode="bicubic", align_corners=False, antialias=True)
    mean = x.new_tensor(clip.mean)[:, None, None]
    std = x.new_tensor(clip.std)[:, None, None]
    x = ((x - mean) / std).to(visual.proj.dtype)
    out = visual.forward_intermediates(
        x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
    )
    tokens = out["image_intermediates"][-1] @ visual.proj  # [F, rows * cols, E]
    rows, cols = visual.grid_size
    return tokens.float().transpose(1, 2).reshape(len(frames), -1, rows, cols)


def pool_to_grid(maps: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """An item's patch maps ``[F, E, h, w]`` average-pooled to its token grid ``(frames, rows, cols)``: ``[n, E]``
    in frame-major, row-major token order (a token's patches: its band of frames, rows and columns)."""
    pooled = F.adaptive_avg_pool3d(maps.transpose(0, 1), grid)  # [E, frames, rows, cols]
    return pooled.flatten(1).T


def embedding_relevance(unit: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Each token's mean cosine similarity to the sample's text token embeddings: unit features ``[n, D]``, text
    ``[T, D]`` -> ``[n]`` (all ones for a sample without text)."""
    text = F.normalize(text.to(unit), dim=-1)
    return (unit @ text.T).mean(dim=1) if len(text) else unit.new_ones(len(unit))


@dataclass(frozen=True)
class RelevanceMethod(VisionMethod):
    """A vision method with a relevance term: ``clip`` names an OpenCLIP model directory (empty: the language
    model's own text embeddings). The CLIP is loaded once per method instance, at ``compress`` (``check_model``),
    and moved to the visual features' device and dtype at first use."""

    clip: str = optional("")

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]  # what the relevance term reads
        return frozenset({"text", "image"}) if self.clip else frozenset({"text_embeddings"})

    def validate(self) -> None:
        if self.clip:
            clip_directory(self.name, self.clip)

    def check_model(self, info: ModelInfo) -> None:
        super().check_model(info)
        if self.clip:
            self.clip_model  # noqa: B018  # load now: a checkpoint that does not load fails at compress

    @cached_property
    def clip_model(self) -> Clip:
        return load_clip(self.name, self.clip)

    def relevance(self, items: list[VisualItem], unit: torch.Tensor) -> torch.Tensor:
        """Relevance ``[B, n]`` of items of one token count whose unit features are ``unit [B, n, D]`` (in
        ``unit``'s dtype and device)."""
        if not self.clip:
            return torch.stack(
                [embedding_relevance(u, item.signals["text_embeddings"]) for u, item in zip(unit, items)]
            )
        clip = self.clip_model
        clip.model.to(unit.device, items[0].features.dtype)  # in place; a no-op once there
        return torch.stack(clip_relevance(clip, items)).to(unit)
