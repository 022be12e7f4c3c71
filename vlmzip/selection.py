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
    """Cluster ``points [n, D]`` into ``count`` clusters by density peaks over k nearest neighbours (DPC-kNN):
    one sample of ``batched_density_peaks``. Returns ``(centres [count], assignment [n])``."""
    one = torch.tensor([count])
    centres, _, assignment = batched_density_peaks(
        points[None], torch.ones(1, len(points), dtype=torch.bool), one, one.clone().fill_(neighbours)
    )
    return centres[0], assignment[0]


def batched_density_peaks(
    points: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor, neighbours: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cluster each sample's valid ``points [B, n, D]`` (``valid [B, n]``) into ``counts[b]`` clusters by density
    peaks over ``neighbours[b]`` nearest neighbours (DPC-kNN), all samples at once.

    Distances are Euclidean over ``sqrt(D)``; a point's density is ``exp(-mean squared distance)`` to its nearest
    valid points (itself included); its separation is its distance to the nearest denser point (the densest: the
    sample's largest distance). The points with the highest density x separation are the centres, and every point
    joins its nearest centre. Ties go to the earlier point: pass the points in order of preference. Returns
    ``(centres [B, C], centre_valid [B, C], assignment [B, n])`` with ``C = max(counts)``: the centres' indices,
    which are real, and each point's cluster (``centres[b, c]`` is in cluster ``c``; invalid points: ``-1``).
    ``1 <= counts[b] <= valid[b].sum()`` for samples with points.
    """
    batch, n, dim = points.shape
    device = points.device
    valid = valid.to(device)
    x = points.float()
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / dim**0.5
    pair = valid[:, :, None] & valid[:, None, :]
    k = torch.minimum(neighbours.to(device), valid.sum(dim=1)).clamp(min=1)
    nearest = distance.masked_fill(~valid[:, None, :], float("inf")).sort(dim=2).values
    within = torch.arange(n, device=device) < k[:, None, None]
    density = (-(torch.where(within, nearest, 0.0) ** 2).sum(dim=2) / k[:, None]).exp()
    density = torch.where(valid, density, -1.0)
    order = density.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=device).expand(batch, n))
    farthest = torch.where(pair, distance, 0.0).amax(dim=(1, 2))[:, None, None]
    denser = pair & (rank[:, None, :] < rank[:, :, None])  # [b, i, j]: j is denser than i
    separation = torch.where(denser, distance, farthest).amin(dim=2)
    peak = torch.where(valid, separation * density, float("-inf"))
    width = int(counts.max()) if len(counts) else 0
    centres = peak.argsort(dim=1, descending=True, stable=True)[:, :width]
    centre_valid = torch.arange(width, device=device) < counts.to(device)[:, None]
    to_centre = distance.gather(2, centres[:, None, :].expand(batch, n, width))
    assignment = to_centre.masked_fill(~centre_valid[:, None, :], float("inf")).argmin(dim=2)
    own = torch.arange(width, device=device).expand(batch, width)
    assignment = assignment.scatter(1, centres, torch.where(centre_valid, own, assignment.gather(1, centres)))
    return centres, centre_valid, torch.where(valid, assignment, -1)


def cluster_means(points: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Merge each sample's valid ``points [B, n, D]`` into ``counts[b]`` tokens: DPC-kNN clusters (``counts[b]``
    neighbours, as SparseVLM) averaged. Returns ``(centres [B, C], centre_valid [B, C], means [B, C, D] float)``."""
    points = points.float()
    centres, centre_valid, assignment = batched_density_peaks(points, valid, counts, counts)
    offset = torch.arange(len(points), device=points.device)[:, None] * centres.shape[1]
    target = torch.where(assignment >= 0, assignment + offset, -1)
    means = merge_rows(points.flatten(0, 1), target.flatten(), centres.numel()).view(*centres.shape, -1)
    return centres, centre_valid, means
