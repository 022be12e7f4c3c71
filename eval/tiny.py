"""Tiny randomly initialised vision-language models and matching raw inputs, for tests and examples.

Everything is built offline from configs (no hub, no processor, no tokenizer), in fp32 on CPU, in a
fraction of a second. Each model family's module in ``vlmzip.eval.families`` defines its tiny models' configs and
special ids; eight are covered, and every image (or view of one) gives 16 visual tokens or a multiple:

==============  ===================================================================================
``llava``       CLIP tower (8x8 image, patch 2 -> 16 patches + CLS; feature layer -2, CLS dropped),
                Llama text model.
``llava_gemma3`` the same LLaVA on Gemma-3's text model (as llava-gemma checkpoints and the shipped LLaVA
                fixture), its text layers as ``gemma3``'s.
``qwen2_vl``    Qwen2-VL tower (patch 14, merge 2); images are 8x8-patch grids ``[1, 8, 8]``.
``qwen2_5_vl``  Qwen2.5-VL tower with windowed attention (window 56 px = 2x2 merged tokens, so 4
                windows per image) in block 0 and full attention in block 1.
``qwen3_vl``    Qwen3-VL tower (patch 16, merge 2, DeepStack from vision block 0) on ``[1, 8, 8]``.
``gemma3``      SigLIP tower (16x16 image, patch 2 -> 8x8 patches, pooled 2x2 -> 16 tokens); text
                layers ``sliding, sliding, full, sliding`` with a sliding window of 8.
``llava_next``  CLIP tower on anyres images (8x8 crops, patch 2; pinpoints 8x16 and 16x8): a base view of
                16 tokens and a high-resolution view of 32 (24 when unpadded), each row ending in a
                newline token; Llama text model.
``llava_onevision`` the same layout on a SigLIP tower and Qwen2's text model; the images of a sample of
                several are base views only (16 tokens + newline); a video frame pools to 2x2 tokens.
==============  ===================================================================================

Language models: hidden 64, 4 heads, 2 KV heads, head dim 16, 4 decoder layers, vocabulary of 256
ids. Special ids sit at the bottom of the vocabulary (each family's ``TINY_IDS``); random text ids are
drawn from the rest. Qwen videos use the same 8x8-patch frames: a video of ``F`` frames gives a grid
``[F / 2, 8, 8]``, i.e. ``8 * F`` tokens.

``generate`` never stops early: the generation config has no EOS id and pads with the pad id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import AutoModelForImageTextToText, PreTrainedConfig, PreTrainedModel

from vlmzip.eval.families import tiny_models
from vlmzip.eval.families.base import TINY
from vlmzip.eval.families.gemma3 import gemma3_text_config
from vlmzip.eval.families.llava_next import image_sizes
from vlmzip.registry import adapter_for

__all__ = [
    "FAMILIES",
    "gemma3_text_config",
    "random_inputs",
    "split_batch",
    "tiny_model",
    "visual_mask",
    "visual_token_count",
]

# Every family's tiny models (vlmzip.eval.families: their configs and special ids live there), in its order.
FAMILIES: tuple[str, ...] = tuple(tiny_models())

_QWEN_FPS = 2.0  # sampled fps the Qwen2.5-VL processor assumes by default
_DEFAULT_TEXT_TOKENS = 8

_QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_ANYRES_FAMILIES = ("llava_next", "llava_onevision")  # a base view plus crops, sized per image
_VIDEO_FAMILIES = (*_QWEN_FAMILIES, "llava_onevision")
_BOS_FAMILIES = ("llava", "gemma3", "llava_next")  # their tokenizers start every prompt with BOS
_CONFIG_ID_NAMES = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "boi_token_id",
    "eoi_token_id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


# ---------------------------------------------------------------------------------------------- models


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """A tiny random ``*ForConditionalGeneration`` model of ``family``: fp32, eval mode, deterministic
    from ``seed`` (the global torch RNG is left untouched).

    Raises ``ValueError`` naming the valid families for an unknown ``family``.
    """
    tiny = tiny_models().get(family)
    if tiny is None:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    config = tiny.config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
        if tiny.init_weights is not None:
            tiny.init_weights(model)
        if config.get_text_config().model_type == "gemma3_text":
            # Gemma-3's text model zero-initialises its query/key norms (weights are offsets from 1): all keys
            # then share one norm, and key-norm scores would rank rounding noise
            for name, parameter in model.named_parameters():
                if name.endswith(("k_norm.weight", "q_norm.weight")):
                    torch.nn.init.normal_(parameter, std=0.5)
    _configure_generation(model, tiny.special_ids)
    return model.eval()


def _configure_generation(model: PreTrainedModel, ids: Mapping[str, int]) -> None:
    generation = model.generation_config
    generation.eos_token_id = None  # random weights: never stop before max_new_tokens
    generation.pad_token_id = ids["pad"]
    generation.bos_token_id = ids["bos"]
    generation.do_sample = False


# ---------------------------------------------------------------------------------------------- inputs


def _family(model: PreTrainedModel) -> str:
    family = model.config.model_type
    if family not in FAMILIES:
        raise ValueError(f"model type {family!r} is not one of {', '.join(FAMILIES)}")
    return family


def _special_ids(config: PreTrainedConfig) -> set[int]:
    """Every special id the config (or its text config) names."""
    found: set[int] = set()
    for cfg in (config, config.get_text_config()):
        for name in _CONFIG_ID_NAMES:
            value = getattr(cfg, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            found.update(int(v) for v in values if v is not None)
    return found


def _text_pool(config: PreTrainedConfig) -> torch.Tensor:
    vocab = config.get_text_config().vocab_size
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[[i for i in _special_ids(config) if i < vocab]] = False
    return allowed.nonzero().squeeze(1)


def _random_text(pool: torch.Tensor, n: int, gen: torch.Generator) -> list[int]:
    return pool[torch.randint(len(pool), (n,), generator=gen)].tolist()


def _qwen_tokens_per_frame(config: PreTrainedConfig, patches: int) -> int:
    return (patches // config.vision_config.spatial_merge_size) ** 2


def _image_ids(family: str, config: PreTrainedConfig, patches: int) -> list[int]:
    """The token ids one image expands to, as the family's processor (and chat template) lays it out."""
    if family == "llava":
        vision = config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        n += 1 if config.vision_feature_select_strategy == "full" else 0
        return [config.image_token_id] * n
    if family == "gemma3":
        run = [config.image_token_id] * config.mm_tokens_per_image
        return [config.boi_token_id, *run, config.eoi_token_id]
    run = [config.image_token_id] * _qwen_tokens_per_frame(config, patches)
    return [config.vision_start_token_id, *run, config.vision_end_token_id]


def _video_ids(
    family: str, config: PreTrainedConfig, frames: int, patches: int, pool: torch.Tensor, gen: torch.Generator
) -> list[int]:
    """Token ids of one video of ``frames`` frames (Qwen families).

    Qwen3-VL's processor splits a video per temporal patch, each part preceded by a timestamp
    (one random text token here) and wrapped in vision start/end; its M-RoPE needs that layout.
    """
    start, end, video = config.vision_start_token_id, config.vision_end_token_id, config.video_token_id
    per_frame = _qwen_tokens_per_frame(config, patches)
    temporal = frames // config.vision_config.temporal_patch_size
    if family != "qwen3_vl":
        return [start, *[video] * (per_frame * temporal), end]
    ids = [start]
    for _ in range(temporal):
        ids += [*_random_text(pool, 1, gen), start, *[video] * per_frame, end]
    return [*ids, end]


def _interleave(text_length: int, visuals: list[list[int]], pool: torch.Tensor, gen: torch.Generator) -> list[int]:
    """Random text split into ``len(visuals) + 1`` non-empty, near-equal segments around the visuals."""
    parts = len(visuals) + 1
    if text_length < parts:
        raise ValueError(f"a sample with {len(visuals)} images/videos needs at least {parts} text tokens")
    sizes = [text_length // parts + (1 if j < text_length % parts else 0) for j in range(parts)]
    ids = _random_text(pool, sizes[0], gen)
    for visual, size in zip(visuals, sizes[1:], strict=True):
        ids += visual + _random_text(pool, size, gen)
    return ids


def _left_pad(samples: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, sample in enumerate(samples):
        input_ids[row, length - len(sample) :] = torch.tensor(sample, dtype=torch.long)
        attention_mask[row, length - len(sample) :] = 1
    return input_ids, attention_mask


def _square_pixels(config: PreTrainedConfig, n_images: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(n_images, 3, size, size, generator=gen)}


def _qwen_pixels(config: PreTrainedConfig, grids: list[list[int]], gen: torch.Generator) -> torch.Tensor:
    vision = config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    n_patches = sum(t * h * w for t, h, w in grids)
    return torch.randn(n_patches, patch_dim, generator=gen)


def _qwen_visual_inputs(
    family: str, config: PreTrainedConfig, n_images: int, frames: list[int], patches: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if n_images:
        grids = [[1, patches, patches]] * n_images
        out["pixel_values"] = _qwen_pixels(config, grids, gen)
        out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    temporal_patch = config.vision_config.temporal_patch_size
    videos = [[f // temporal_patch, patches, patches] for f in frames if f]
    if videos:
        out["pixel_values_videos"] = _qwen_pixels(config, videos, gen)
        out["video_grid_thw"] = torch.tensor(videos, dtype=torch.long)
        if family == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.full((len(videos),), temporal_patch / _QWEN_FPS)
    return out


def _anyres_inputs(
    model: PreTrainedModel, images_per_sample: Sequence[int], frames: list[int], gen: torch.Generator
) -> tuple[list[list[list[int]]], dict[str, torch.Tensor]]:
    """LLaVA-NeXT / OneVision: each sample's visual id runs (its images, then its video) and the pixel inputs.

    A sample's images take ``llava_next.image_sizes`` in turn; their placeholder counts are the adapter's (the model
    checks them against its features). OneVision encodes the images of a sample of several as base views only
    (``batch_num_images``); its videos of one batch share a frame count (one ``[videos, frames, ...]`` tensor).
    """
    config, adapter = model.config, adapter_for(model)
    side = config.vision_config.image_size
    sizes = [size for n in images_per_sample for size in image_sizes(config, n)]
    pixels: dict[str, torch.Tensor] = {}
    ids: list[list[list[int]]] = [[] for _ in images_per_sample]
    if sizes:
        pixels["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        if config.model_type == "llava_onevision":
            pixels["batch_num_images"] = torch.tensor(list(images_per_sample), dtype=torch.long)
        image_id = config.image_token_id
        probe = {"input_ids": torch.tensor([[image_id]]), "pixel_values": torch.zeros(0), **pixels}
        runs = iter(adapter.placements("image", probe, []))
        crops = []
        for i, n in enumerate(images_per_sample):
            for _ in range(n):
                placement = next(runs)
                ids[i].append([image_id] * placement.length)
                crops.append(1 if len(placement.parts) == 1 else 1 + placement.parts[1].view.rows)
        pixels["pixel_values"] = torch.randn(len(sizes), max(crops), 3, side, side, generator=gen)
    videos = [f for f in frames if f]
    if videos:
        if len(set(videos)) > 1:
            raise ValueError(f"{config.model_type} videos of one batch share a frame count, got {videos}")
        probe = {"input_ids": torch.tensor([[config.video_token_id]]), "pixel_values_videos": torch.zeros(1, videos[0])}
        length = adapter.placements("video", probe, [])[0].length
        for i, f in enumerate(frames):
            if f:
                ids[i].append([config.video_token_id] * length)
        pixels["pixel_values_videos"] = torch.randn(len(videos), videos[0], 3, side, side, generator=gen)
    return ids, pixels


def _check_request(
    family: str,
    config: PreTrainedConfig,
    images_per_sample: Sequence[int],
    text_lengths: Sequence[int] | None,
    video_frames: Sequence[int] | None,
) -> None:
    batch = len(images_per_sample)
    if batch == 0 or min(images_per_sample) < 0:
        raise ValueError("images_per_sample needs one non-negative count per sample")
    if text_lengths is not None and len(text_lengths) != batch:
        raise ValueError(f"text_lengths has {len(text_lengths)} entries for {batch} samples")
    if video_frames is None:
        return
    if family not in _VIDEO_FAMILIES:
        raise ValueError(f"videos are only supported for {', '.join(_VIDEO_FAMILIES)}, not {family!r}")
    if len(video_frames) != batch:
        raise ValueError(f"video_frames has {len(video_frames)} entries for {batch} samples")
    step = getattr(config.vision_config, "temporal_patch_size", 1)
    if any(f < 0 or f % step for f in video_frames):
        raise ValueError(f"video frame counts must be non-negative multiples of {step}: {list(video_frames)}")


def random_inputs(
    model: PreTrainedModel,
    images_per_sample: Sequence[int],
    text_lengths: Sequence[int] | None = None,
    video_frames: Sequence[int] | None = None,
    seed: int = 0,
    qwen_patches: int = TINY.qwen_grid,
) -> dict[str, torch.Tensor]:
    """A left-padded batch of ``len(images_per_sample)`` random prompts for a model of a supported family
    (a ``tiny_model``, or a real-size architecture for benchmarks).

    Sample ``i`` is ``[BOS]`` (LLaVA, Gemma-3), then ``text_lengths[i]`` random text ids (default 8)
    split into near-equal non-empty segments around its ``images_per_sample[i]`` images and, for Qwen
    families with ``video_frames``, one video of ``video_frames[i]`` frames (0: no video) after the
    images; it always ends in a text token. Each image is one contiguous run of the image placeholder
    id, wrapped like the family's processor and chat template do (Qwen: vision start/end ids; Gemma-3:
    boi/eoi ids). A Qwen3-VL video is split per temporal patch like its processor does, each part
    behind one random "timestamp" text token (not counted in ``text_lengths``) and wrapped in vision
    start/end. Random text ids never collide with a special id. Pads (left) use the pad id and have
    ``attention_mask`` 0.

    Returns the kwargs the family's processor would give: ``input_ids``, ``attention_mask``,
    ``pixel_values`` (if any image), plus ``image_grid_thw`` and ``mm_token_type_ids`` (0 text,
    1 image, 2 video) for Qwen, ``pixel_values_videos`` / ``video_grid_thw`` (and Qwen2.5-VL's
    ``second_per_grid_ts``) for videos, ``token_type_ids`` (1 on image tokens) for Gemma-3. LLaVA and
    Gemma-3 images have the size their config fixes; Qwen images and video frames are ``qwen_patches``
    patches per side (24 for 336x336 at patch 14).
    """
    config = model.config
    family = _family(model)
    _check_request(family, config, images_per_sample, text_lengths, video_frames)
    frames = list(video_frames) if video_frames is not None else [0] * len(images_per_sample)
    gen = torch.Generator().manual_seed(seed)
    pool = _text_pool(config)
    text_config = config.get_text_config()

    anyres = _anyres_inputs(model, images_per_sample, frames, gen) if family in _ANYRES_FAMILIES else None
    samples: list[list[int]] = []
    for i, n_images in enumerate(images_per_sample):
        if anyres is not None:
            visuals = anyres[0][i]
        else:
            visuals = [_image_ids(family, config, qwen_patches) for _ in range(n_images)]
            if frames[i]:
                visuals.append(_video_ids(family, config, frames[i], qwen_patches, pool, gen))
        default_length = max(_DEFAULT_TEXT_TOKENS, len(visuals) + 1)
        text_length = text_lengths[i] if text_lengths is not None else default_length
        has_bos = family in _BOS_FAMILIES and text_config.bos_token_id is not None
        prefix = [text_config.bos_token_id] if has_bos else []
        samples.append(prefix + _interleave(text_length, visuals, pool, gen))

    pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    input_ids, attention_mask = _left_pad(samples, pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    n_images = sum(images_per_sample)
    if anyres is not None:
        inputs.update(anyres[1])
    elif family in _QWEN_FAMILIES:
        inputs.update(_qwen_visual_inputs(family, config, n_images, frames, qwen_patches, gen))
        types = (input_ids == config.image_token_id).long() + 2 * (input_ids == config.video_token_id).long()
        inputs["mm_token_type_ids"] = types
    else:
        if n_images:
            inputs.update(_square_pixels(config, n_images, gen))
        if family == "gemma3":
            inputs["token_type_ids"] = (input_ids == config.image_token_id).long()
    return inputs


def visual_mask(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, L]``: where ``inputs`` hold visual tokens (images and videos) as the family's adapter reads them: the
    placeholders but layout tokens no item holds (LLaVA-NeXT's ``image_newline`` rows, which vlmzip keeps as text)."""
    visual = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for item in adapter_for(model).visual_items(inputs, []):
        visual[item.sample, item.positions] = True
    return visual


def visual_token_count(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> list[int]:
    """Per sample, the number of visual tokens in ``inputs`` (``visual_mask``)."""
    return visual_mask(model, inputs).sum(dim=1).tolist()


def split_batch(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The samples of a ``random_inputs`` batch as separate, unpadded batches of one (same ids and pixels).

    Used to check that a sample gives the same output alone as inside a padded batch.
    """
    config = model.config
    family = _family(model)
    mask = inputs["attention_mask"].bool()
    kinds = [("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw")]
    consumed = {kind: (0, 0) for kind, _, _ in kinds}  # (items, pixel rows) used by earlier samples
    samples = []
    for row in range(mask.shape[0]):
        sample = {key: inputs[key][row : row + 1, mask[row]] for key in inputs if _is_per_token(key)}
        for kind, pixels, grids in kinds:
            if pixels not in inputs:
                continue
            count = int((sample["input_ids"] == getattr(config, f"{kind}_token_id")).sum())
            first_item, first_row = consumed[kind]
            if grids in inputs:  # Qwen: patches of every item stacked, sizes from the grid rows
                per_item = inputs[grids].prod(dim=-1)
                tokens_per_item = per_item // config.vision_config.spatial_merge_size**2
                items = int((tokens_per_item[first_item:].cumsum(0) <= count).sum())
                rows = int(per_item[first_item : first_item + items].sum())
                sample[grids] = inputs[grids][first_item : first_item + items]
                if kind == "video" and "second_per_grid_ts" in inputs:
                    sample["second_per_grid_ts"] = inputs["second_per_grid_ts"][first_item : first_item + items]
            elif family in _ANYRES_FAMILIES:  # one pixel row per image or video; its runs are apart
                runs = (
                    (sample["input_ids"][0] == getattr(config, f"{kind}_token_id")).long().diff(prepend=torch.zeros(1))
                )
                items = rows = int((runs == 1).sum())
                for key in ("image_sizes",) if kind == "image" and "image_sizes" in inputs else ():
                    sample[key] = inputs[key][first_row : first_row + rows]
                if kind == "image" and "batch_num_images" in inputs:
                    sample["batch_num_images"] = torch.tensor([items])
            else:
                per_image = config.mm_tokens_per_image if family == "gemma3" else config.image_seq_length
                items = rows = count // per_image
            if items:
                sample[pixels] = inputs[pixels][first_row : first_row + rows]
            consumed[kind] = (first_item + items, first_row + rows)
        samples.append(sample)
    return samples


def _is_per_token(key: str) -> bool:
    return key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
