"""Pure tensor helpers that choose rows and pack a batch after rows are dropped.

Rows are sequence positions of a left-padded batch ``[B, L]``. Every helper is batched: samples may keep
different numbers of rows, and packing re-pads them on the left so the last row stays the last prompt token.
"""

from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mark, per sample, the ``counts[b]`` candidates with the highest score.

    scores: ``[B, L]`` float; candidates: ``[B, L]`` bool; counts: ``[B]`` int. Ties are broken by position
    (earlier wins) so selection is deterministic. Returns a ``[B, L]`` bool mask, a subset of ``candidates``.
    """
    ranked = torch.where(candidates, scores.float(), torch.tensor(float("-inf"), device=scores.device))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return candidates & (ranks < counts.to(ranks.device).unsqueeze(1))


def pack_left(keep: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the kept rows of each sample to the right end of a shorter, left-padded batch.

    keep: ``[B, L]`` bool. Returns ``(index, valid)``, both ``[B, L']`` with ``L' = max_b keep[b].sum()``:
    ``index[b, j]`` is the source row of packed row ``j`` (rows keep their order), ``valid[b, j]`` is False on
    the new left padding (whose ``index`` points at some dropped row and must be masked out). Pass ``width``
    (the largest kept count) when the caller knows it: it spares a device-to-host synchronisation.
    """
    batch, length = keep.shape
    positions = torch.arange(length, device=keep.device).expand(batch, length)
    order = (keep.long() * length + positions).argsort(dim=1)
    if width is None:
        width = int(keep.sum(dim=1).max().item()) if length else 0
    index = order[:, length - width :]
    return index, keep.gather(1, index)


def gather_rows(tensor: torch.Tensor, index: torch.Tensor, dim: int, batch_dim: int = 0) -> torch.Tensor:
    """Select rows ``index [B, L']`` along sequence dimension ``dim`` of ``tensor`` (batch at ``batch_dim``).

    A broadcast batch of 1 (``position_ids [1, L]``, rotary ``cos [1, L, d]``) is expanded to ``B``.
    """
    batch, rows = index.shape
    if tensor.shape[batch_dim] == 1 and batch > 1:
        tensor = tensor.expand(*tensor.shape[:batch_dim], batch, *tensor.shape[batch_dim + 1 :])
    view = [1] * tensor.dim()
    view[batch_dim], view[dim] = batch, rows
    target = list(tensor.shape)
    target[dim] = rows
    return tensor.gather(dim, index.to(tensor.device).view(view).expand(target))


def gather_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cut position ids ``[B, L]``, ``[1, L]`` or multimodal ``[3 | 4, B, L]`` to rows ``index``."""
    return gather_rows(positions, index, dim=positions.dim() - 1, batch_dim=positions.dim() - 2)


def merge_rows(rows: torch.Tensor, target: torch.Tensor, count: int) -> torch.Tensor:
    """Average rows into ``count`` merged rows: ``rows [n, ...]``, ``target [n]`` the merged row each goes to
    (``-1``: dropped). A merged row with one source is that row, unchanged. Returns ``[count, ...]``."""
    kept = target >= 0
    index = target[kept].to(rows.device)
    sums = rows.new_zeros(count, *rows.shape[1:]).index_add_(0, index, rows[kept.to(rows.device)])
    sizes = torch.zeros(count, dtype=rows.dtype, device=rows.device).index_add_(
        0, index, torch.ones_like(index, dtype=rows.dtype)
    )
    return sums / sizes.clamp(min=1).view(count, *([1] * (rows.dim() - 1)))


def density_peaks(points: torch.Tensor, count: int, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``points [n, D]`` into ``count`` clusters by density peaks over k nearest neighbours (DPC-kNN).

    Distances are Euclidean over ``sqrt(D)``; a point's density is ``exp(-mean squared distance)`` to its
    ``neighbours`` nearest points (itself included); its separation is its distance to the nearest denser point
    (the densest: the largest distance). The ``count`` points with the highest density x separation are the
    centres, and every point joins its nearest centre. Ties (mutual nearest neighbours are equally dense when
    ``neighbours`` is 2) go to the earlier point: pass the points in order of preference. Returns
    ``(centres [count], assignment [n])``: the centres' indices, and each point's cluster (``centres[c]`` is in
    cluster ``c``). ``1 <= count <= n``.
    """
    x = points.float()
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / x.shape[1] ** 0.5
    nearest = distance.topk(min(neighbours, len(x)), dim=1, largest=False).values
    density = (-(nearest**2).mean(dim=1)).exp()
    order = density.argsort(descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(x), device=x.device))
    denser = rank[None, :] < rank[:, None]  # [i, j]: j is denser than i
    separation = torch.where(denser, distance, distance.max()).amin(dim=1)
    centres = (separation * density).argsort(descending=True, stable=True)[:count]
    assignment = distance[:, centres].argmin(dim=1)
    assignment[centres] = torch.arange(count, device=x.device)
    return centres, assignment
