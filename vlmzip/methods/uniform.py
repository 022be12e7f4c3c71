"""Uniform visual-token subsampling: an evenly spaced subset, the pooling-style baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class UniformPrune(VisionMethod):
    """Keep evenly spaced tokens in raster order (frame by frame, row by row): token ``floor((i + 1/2) n / k)``.

    For a keep ratio of 1/4 on a square grid this takes every other token of every other row.
    """

    name = "uniform"
    paper = "baseline"
    title = "evenly spaced subset (pooling-style)"
    deviation = "the same sub-grid in every frame of a video"

    def select(self, item: VisualItem) -> VisualSelection:
        return VisualSelection(_evenly_spaced(item.num_tokens, self.budget(item), item.grid))


def _evenly_spaced(n: int, count: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """``count`` of ``n`` tokens laid out as ``grid``, spread evenly over frames, rows and columns."""
    if count == n:
        return torch.arange(n)
    frames, rows, cols = grid
    per_frame = rows * cols
    if count % frames == 0 and per_frame * frames == n:
        # same sub-grid in every frame: spread evenly over rows and columns of each frame
        local = _even_grid(rows, cols, count // frames)
        return (torch.arange(frames).unsqueeze(1) * per_frame + local).flatten()
    return ((torch.arange(count) * 2 + 1) * n) // (2 * count)


def _even_grid(rows: int, cols: int, count: int) -> torch.Tensor:
    """``count`` indices of a ``rows x cols`` grid spread evenly over both axes, ascending."""
    keep_rows = min(rows, max(1, round((count * rows / cols) ** 0.5)))
    per_row = [count // keep_rows + (1 if r < count % keep_rows else 0) for r in range(keep_rows)]
    if max(per_row) > cols:
        return ((torch.arange(count) * 2 + 1) * rows * cols) // (2 * count)
    picked_rows = ((torch.arange(keep_rows) * 2 + 1) * rows) // (2 * keep_rows)
    out = [row * cols + ((torch.arange(k) * 2 + 1) * cols) // (2 * k) for row, k in zip(picked_rows.tolist(), per_row)]
    return torch.cat(out)
