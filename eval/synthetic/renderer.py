"""The renderer: scenes to ``uint8`` RGB tensors with batched integer torch ops, identical on every device."""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlmzip.eval.synthetic.scenes import BACKGROUND, COLOUR_NAMES, COLOURS, RADIUS, SHAPES, SIZES, SUB, Scene


def _circle(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return u * u + v * v <= r * r


def _ring(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    d2 = u * u + v * v
    return (d2 <= r * r) & (d2 >= -(-r * r // 4))  # inner radius r / 2


def _square(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return (5 * u.abs() <= 4 * r) & (5 * v.abs() <= 4 * r)


def _triangle(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return (5 * v <= 4 * r) & (2 * u.abs() <= v + r)  # apex up at -r, base at 0.8 r


def _cross(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((10 * au <= 3 * r) & (av <= r)) | ((10 * av <= 3 * r) & (au <= r))


def _diamond(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return u.abs() + v.abs() <= r


_INSIDE: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "diamond": _diamond,
}


def shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    """Which points ``(u, v)`` (integer offsets from the centre, ``v`` downwards, broadcast together) lie
    inside ``shape`` of radius ``r``: exact integer inequalities, so every device agrees."""
    return _INSIDE[shape](u, v, r)


@dataclass(frozen=True)
class ObjectArrays:
    """The objects of a batch of scenes as flat ``int64`` tensors, sorted by (shape, size); ``groups``
    holds ``(shape, size, start, count)`` of each run (host-side, so rendering needs no device sync)."""

    image: torch.Tensor  # index of the object's scene
    colour: torch.Tensor  # index into COLOURS
    x: torch.Tensor
    y: torch.Tensor
    span: torch.Tensor  # grid * SUB of the object's scene
    groups: tuple[tuple[str, str, int, int], ...]
    n_images: int
    min_span: int
    max_span: int


def scene_arrays(scenes: Sequence[Scene], device: torch.device | str | None = None) -> ObjectArrays:
    """Flatten scenes into ``ObjectArrays`` (one host-to-device copy)."""
    shape_ix = {s: i for i, s in enumerate(SHAPES)}
    colour_ix = {c: i for i, c in enumerate(COLOUR_NAMES)}
    rows = sorted(
        (shape_ix[o.shape], o.size == "large", b, colour_ix[o.colour], o.x, o.y, s.grid * SUB)
        for b, s in enumerate(scenes)
        for o in s.objects
    )
    groups, start = [], 0
    for (si, large), run in itertools.groupby(rows, key=lambda row: row[:2]):
        count = sum(1 for _ in run)
        groups.append((SHAPES[si], SIZES[int(large)], start, count))
        start += count
    t = torch.tensor([row[2:] for row in rows], dtype=torch.int64).reshape(-1, 5).to(device)
    grids = [s.grid for s in scenes] or [3]
    return ObjectArrays(*t.unbind(1), tuple(groups), len(scenes), min(grids) * SUB, max(grids) * SUB)


_LUT = torch.tensor([BACKGROUND, *COLOURS.values()], dtype=torch.uint8)
# Canvas values: (1 + colour index) << 24 | B << 16 | G << 8 | R; the background has index 0, so any object
# wins an amax against it, and the low three bytes of a little-endian int32 are R, G, B.
_PACKED = torch.tensor([(i << 24) | (b << 16) | (g << 8) | r for i, (r, g, b) in enumerate(_LUT.tolist())])


def _unpack(canvas: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, H, W]`` packed canvas -> uint8 ``[B, 3, H, W]`` RGB."""
    if sys.byteorder == "little":
        return canvas.contiguous().view(torch.uint8).view(*canvas.shape, 4).permute(0, 3, 1, 2)[:, :3].contiguous()
    return torch.stack([((canvas >> s) & 255).to(torch.uint8) for s in (0, 8, 16)], 1)


def render_arrays(a: ObjectArrays, size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """Render to ``uint8 [n_images, 3, size, size]`` on ``device`` (default: where ``a`` lives).

    Pixel ``(i, j)`` has its centre at ``((j + 0.5) / size, (i + 0.5) / size)`` of the board; every
    coordinate is scaled by ``2 * size`` so the inside tests are integer. Each (shape, size) group is
    tested on a square patch of pixels around its objects, and the patches are scattered with ``amax``
    into a padded canvas of packed colours: the result does not depend on the scatter order (where
    objects overlap, the higher colour index wins)."""
    dev = torch.device(device) if device is not None else a.x.device
    margin = 4  # objects lie inside the board (Scene checks), so patches overhang it by at most 3 pixels
    side = size + 2 * margin
    packed = _PACKED.to(dev, torch.int32)
    canvas = torch.full((a.n_images * side * side,), int(_PACKED[0]), dtype=torch.int32, device=dev)
    for shape, size_name, start, count in a.groups:
        rad = RADIUS[size_name]
        p = math.ceil(2 * rad * size / a.min_span) + 3  # pixels per patch side
        # |u|, |v| <= 2 * span * (p + 2) on a patch, squared in circles and rings
        dtype = torch.int32 if 2 * (2 * a.max_span * (p + 2)) ** 2 < 2**31 else torch.int64
        sl = slice(start, start + count)
        x, y, span = a.x[sl].to(dev), a.y[sl].to(dev), a.span[sl].to(dev)
        ox = torch.div((x - rad) * size, span, rounding_mode="floor") - 1  # first pixel column of the patch
        oy = torch.div((y - rad) * size, span, rounding_mode="floor") - 1
        ar = torch.arange(p, device=dev)
        u = ((2 * (ox[:, None] + ar) + 1) * span[:, None] - 2 * size * x[:, None]).to(dtype)
        v = ((2 * (oy[:, None] + ar) + 1) * span[:, None] - 2 * size * y[:, None]).to(dtype)
        inside = shape_mask(shape, u[:, None, :], v[:, :, None], 2 * size * rad)
        base = a.image[sl].to(dev) * (side * side) + (oy + margin) * side + ox + margin
        idx = base[:, None, None] + (ar[:, None] * side + ar[None, :])
        val = inside.to(torch.int32) * packed[a.colour[sl].to(dev) + 1][:, None, None]
        canvas.scatter_reduce_(0, idx.reshape(-1), val.reshape(-1), reduce="amax")
    crop = canvas.view(a.n_images, side, side)[:, margin : margin + size, margin : margin + size]
    return _unpack(crop)


def render(scenes: Sequence[Scene], size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """Render scenes to ``uint8 [B, 3, size, size]`` (batched torch ops; pass ``device="cuda"`` on a GPU)."""
    return render_arrays(scene_arrays(scenes, device), size, device)


def classify_colours(rgb: np.ndarray) -> np.ndarray:
    """Nearest palette entry per pixel of ``[..., 3]`` RGB: 0 = background, 1 + index into ``COLOURS``."""
    lut = _LUT.numpy().astype(np.int32)
    d = ((rgb[..., None, :].astype(np.int32) - lut) ** 2).sum(-1)
    return d.argmin(-1)
