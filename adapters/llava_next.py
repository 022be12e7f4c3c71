"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA's CLIP tower on "anyres" images.

The tower encodes each image as a base view (the image resized to one tower input) plus the crops of a
high-resolution view (a grid of ``image_grid_pinpoints``). The model stitches the crops' patches into one grid, cuts
the padding the processor added (``unpad_image``) and appends an ``image_newline`` token to every row, so one
image's placeholder run is ``side**2`` base tokens, then ``rows x (cols + 1)`` high-resolution ones.

vlmzip makes each view an item of its own (``(1, side, side)`` and ``(1, rows, cols)``), so spatial methods see the
stitched grid as the model lays it out, and a budget applies to each view. The ``image_newline`` tokens are layout,
not content: they are in no item, never pruned, and counted as text (``Placement``). Tower signals map through the
model's own layout (``View``): a high-resolution token's [CLS] attention is its crop's [CLS] row at its patch.

Pruning inside the tower (``at_layer``) is refused: a stacked tower plan keeps one count per tower row, but a crop
holds a window of a view's tokens cut by the unpadding, not an item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.nn import functional as F
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from vlmzip.adapter import Part, Placement, VisionRun, runs_by_kind, summed_attention
from vlmzip.adapters.llava import LlavaAdapter
from vlmzip.errors import InputError, UnsupportedModelError
from vlmzip.registry import register_adapter
from vlmzip.stages import VisualItem

KINDS = ("image", "video")


@dataclass(frozen=True)
class View:
    """Where an item's tokens come from in its tower forward: ``frames`` times a ``crops = (rows, cols)`` grid of
    consecutive tower rows from ``first``, stitched side by side, cut to ``window = (top, left, height, width)``
    patches (the unpadding) and resampled bilinearly to ``size = (rows, cols)`` tokens per frame."""

    first: int
    frames: int
    crops: tuple[int, int]
    window: tuple[int, int, int, int]
    size: tuple[int, int]

    @property
    def rows(self) -> int:
        return self.frames * self.crops[0] * self.crops[1]


def view_patches(per_patch: torch.Tensor, view: View, side: int) -> torch.Tensor:
    """``per_patch [tower rows, side**2, C]`` -> the view's window ``[frames, C, height, width]``, as the model
    stitches its crops (``pack_image_features``) and unpads them."""
    rows, cols = view.crops
    x = per_patch[view.first : view.first + view.rows]
    x = x.reshape(view.frames, rows, cols, side, side, -1).permute(0, 5, 1, 3, 2, 4)
    x = x.reshape(view.frames, -1, rows * side, cols * side)
    top, left, height, width = view.window
    return x[:, :, top : top + height, left : left + width]


def view_tokens(per_patch: torch.Tensor, view: View, side: int) -> torch.Tensor:
    """``per_patch [tower rows, side**2, C]`` -> ``[tokens, C]`` in the view's token order (frame-major,
    row-major), resampled as the model resamples (anyres_max, video pooling)."""
    x = view_patches(per_patch, view, side)
    if tuple(x.shape[-2:]) != view.size:
        x = F.interpolate(x, list(view.size), mode="bilinear")
    return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])


def view_units(per_patch: torch.Tensor, view: View, side: int) -> torch.Tensor | None:
    """``[tokens, U, C]``: the ``U`` patch vectors each token is the mean of (1, or a 2x2 cell where the model
    halves the grid, which bilinear resampling by exactly 2 does); ``None`` where a token is another blend."""
    x = view_patches(per_patch, view, side)
    frames, channels, height, width = x.shape
    if (height, width) == view.size:
        return x.flatten(2).transpose(1, 2).reshape(-1, 1, channels)
    if (height, width) != (2 * view.size[0], 2 * view.size[1]):
        return None
    cells = x.reshape(frames, channels, view.size[0], 2, view.size[1], 2).permute(0, 2, 4, 3, 5, 1)
    return cells.reshape(-1, 4, channels)


def image_placement(views: list[View], side: int) -> Placement:
    """An image's placeholder run: the base view's ``side**2`` tokens, then the high-resolution view's rows, each
    followed by an ``image_newline`` (or, without one, a single newline after the base view)."""
    base = Part((1, side, side), torch.arange(side * side), views[0])
    if len(views) == 1:
        return Placement(side * side + 1, (base,))
    rows, cols = views[1].size
    offsets = side * side + (torch.arange(rows)[:, None] * (cols + 1) + torch.arange(cols)).flatten()
    return Placement(side * side + rows * (cols + 1), (base, Part((1, rows, cols), offsets, views[1])))


def originals(outputs: list[torch.Tensor]) -> list[int]:
    """For each encoder output, the first one equal to it: ``generate`` repeats a sample's outputs for its copies
    (beam search), which the tower encoded once."""
    first: list[int] = []
    for index, output in enumerate(outputs):
        same = (j for j in set(first) if outputs[j] is output or torch.equal(outputs[j], output))
        first.append(next(same, index))
    return first


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    model_types = ("llava_next",)
    family = "LLaVA-NeXT"
    notes = (
        "anyres: base view and stitched high-resolution view are separate items; image_newline tokens kept as text; "
        "CLIP [CLS] attention per crop; no pruning inside the tower"
    )
    tower_cut = False

    @property
    def side(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def placements(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> list[Placement]:
        if not bool((inputs["input_ids"] == self.placeholder_ids()[kind]).any()):
            return []
        return [image_placement(views, self.side) for views in self._image_views(inputs, runs)]

    # -- each image's views: from its size (a forward given pixels), else from its features (generate) ------------
    def _image_views(self, inputs: dict[str, Any], runs: list[VisionRun]) -> list[list[View]]:
        if inputs.get("pixel_values") is not None:
            sizes = inputs.get("image_sizes")
            if sizes is None:
                raise InputError(f"{self.family} needs image_sizes with pixel_values (as the processor returns them)")
            patched = self._patched(inputs, len(sizes))
            views, first = [], 0
            for size, crops in zip(sizes, patched):
                views.append(self._views_of_size(size, first) if crops else [self._base(first)])
                first += sum(view.rows for view in views[-1])
            return views
        encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
        if encoded is None:
            raise InputError(
                f"the prompt has image placeholders but no image input: pass pixel_values with image_sizes "
                f"(vlmzip reads each {self.family} image's layout from them)"
            )
        outputs = list(encoded.pooler_output)
        sources = originals(outputs)
        unique = sorted(set(sources))
        # the tower encodes images first: its row count is every original image's base view and crops
        crops = runs[0].count if runs else None
        views = dict(zip(unique, self._views_of_features([outputs[i] for i in unique], crops)))
        return [views[source] for source in sources]

    def _patched(self, inputs: dict[str, Any], images: int) -> list[bool]:
        """Whether each image has a high-resolution view (every LLaVA-NeXT image does)."""
        return [True] * images

    def _base(self, first: int) -> View:
        side = self.side
        return View(first, 1, (1, 1), (0, 0, side, side), (side, side))

    def _views_of_size(self, size: Any, first: int) -> list[View]:
        config, side = self.model.config, self.side
        rows, cols = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        grid = torch.arange(rows * side * cols * side).view(1, rows * side, cols * side)
        kept = unpad_image(grid, size)  # the model's own unpadding, on patch indices
        top, left = divmod(int(kept[0, 0, 0]), cols * side)
        height, width = kept.shape[1:]
        window = (top, left, height, width)
        return [self._base(first), View(first + 1, 1, (rows, cols), window, self._resampled(height, width))]

    def _resampled(self, height: int, width: int) -> tuple[int, int]:
        """Tokens a side of the unpadded high-resolution grid gives (LLaVA-NeXT keeps the grid as it is)."""
        return (height, width)

    def _views_of_features(self, encoded: list[torch.Tensor], crops: int | None) -> list[list[View]]:
        """The images' views from their encoded features (``generate`` drops ``image_sizes``). The newline rows give
        each high-resolution grid; a grid can come from several crop grids (unpadding and resampling lose sizes), so
        each image takes the fewest crops that still let all the images fill the tower's ``crops`` rows (where
        known). Exact where one choice fits (an image alone in its forward, NeXT's grids); otherwise the tower
        signals of a view may be read from a near window (docs/architecture.md)."""
        options = [self._fits(features) for features in encoded]
        reachable = [{0}]  # rows the images from each one to the last can fill
        for fits in reversed(options):
            reachable.insert(
                0,
                {rows + 1 + view.rows for rows in reachable[0] for view in fits}
                if fits
                else {rows + 1 for rows in reachable[0]},
            )
        views, first = [], 0
        for index, fits in enumerate(options):
            left = None if crops is None or crops not in reachable[0] else crops - first
            chosen = (
                next((view for view in fits if left is None or left - 1 - view.rows in reachable[index + 1]), fits[0])
                if fits
                else None
            )
            views.append(
                [self._base(first)] if chosen is None else [self._base(first), replace(chosen, first=first + 1)]
            )
            first += sum(view.rows for view in views[-1])
        return views

    def _fits(self, features: torch.Tensor) -> list[View]:
        """The high-resolution views that give an image's encoded features their grid, fewest crops first (none:
        the image has a base view only)."""
        base = self.side**2
        if len(features) == base + 1:
            return []
        newline = self.model.model.image_newline.to(features)
        rows = int((features[base:] == newline).all(dim=-1).sum())
        size = (rows, (len(features) - base) // max(rows, 1) - 1)
        fits = sorted((view for view in self._high_resolution_views(0) if view.size == size), key=lambda v: v.rows)
        if not fits:
            raise UnsupportedModelError(
                f"an encoded {self.family} image of {len(features)} features fits no grid of image_grid_pinpoints; "
                "pass pixel_values with image_sizes"
            )
        return fits

    def _high_resolution_views(self, first: int) -> list[View]:
        """Every view unpadding can make of every pinpoint grid (it trims a side evenly from both ends)."""
        config, side = self.model.config, self.side
        views = []
        for height, width in config.image_grid_pinpoints:
            rows, cols = height // config.vision_config.image_size, width // config.vision_config.image_size
            full_h, full_w = rows * side, cols * side
            windows = [(pad, 0, full_h - 2 * pad, full_w) for pad in range((full_h + 1) // 2)]
            windows += [(0, pad, full_h, full_w - 2 * pad) for pad in range(1, (full_w + 1) // 2)]
            views += [View(first, 1, (rows, cols), w, self._resampled(w[2], w[3])) for w in windows]
        return views

    # -- tower signals, mapped through each item's view ---------------------------------------------------------
    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        def per_patch(run: VisionRun) -> torch.Tensor:
            mass = summed_attention(run).float()
            return mass[:, mass.shape[1] - self.side**2 :, None]  # without the [CLS] column, where there is one

        for item, patches in self._per_item(runs, items, per_patch, "score them by vision attention"):
            item.signals["vision_attention"] = view_tokens(patches, item.view, self.side)[:, 0].to(
                item.positions.device
            )

    def tower_features(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        def per_patch(run: VisionRun) -> torch.Tensor:
            return torch.cat(run.projector_inputs)

        for item, patches in self._per_item(runs, items, per_patch, "read their projector inputs"):
            units = view_units(patches, item.view, self.side)
            if units is None:
                raise UnsupportedModelError(
                    f"{self.family} resamples this {item.kind}'s features bilinearly ({item.view.window[2:]} patches "
                    f"to {item.view.size} tokens), so no projector inputs make a token: use a method that does not "
                    "read tower_features"
                )
            item.signals["tower_features"] = units

    def images(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # a view's frames are its crops' pixels stitched and cut to its window, as its patches are (resampling
        # keeps each token over its equal band of the window)
        def pixels(run: VisionRun) -> torch.Tensor:
            if run.pixels is None:
                raise InputError("vlmzip saw no pixels for this request's vision-tower forward: pass pixel_values")
            return run.pixels.permute(0, 2, 3, 1).reshape(len(run.pixels), -1, run.pixels.shape[1])

        patch = self.model.config.vision_config.patch_size
        for item, per_pixel in self._per_item(runs, items, pixels, "read their images"):
            in_pixels = replace(item.view, window=tuple(x * patch for x in item.view.window))
            side = math.isqrt(per_pixel.shape[1])
            item.signals["image"] = self.unnormalise(view_patches(per_pixel, in_pixels, side))

    def _per_item(self, runs: list[VisionRun], items: list[VisualItem], read, purpose: str):
        """``(item, read(its tower forward))`` for every item: each kind present pairs with the next forward."""
        read_runs: dict[int, torch.Tensor] = {}
        run_of = runs_by_kind(runs, items, KINDS)
        for item in items:
            run = run_of[item.kind]
            if run is not None and id(run) not in read_runs:
                read_runs[id(run)] = read(run)
            tensor = read_runs.get(id(run))
            if tensor is None or item.view is None or item.view.first + item.view.rows > len(tensor):
                raise InputError(
                    f"vlmzip saw no vision-tower forward for this request's {item.kind}s, so it cannot {purpose}: pass "
                    "pixel values (not precomputed encoder outputs)"
                )
            yield item, tensor
