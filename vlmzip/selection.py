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


def nearest_valid(valid: torch.Tensor) -> torch.Tensor:
    """``[B, L]``: for each row the nearest valid row at or before it, or, where none precedes it (left padding),
    the first valid row after it; a valid row is its own. ``valid``: ``[B, L]`` bool with a valid row per sample."""
    length = valid.shape[1]
    columns = torch.arange(length, device=valid.device).expand_as(valid)
    before = torch.where(valid, columns, -1).cummax(dim=1).values
    after = torch.where(valid, columns, length).flip(1).cummin(dim=1).values.flip(1)
    return torch.where(before >= 0, before, after).clamp(max=length - 1)


def share_count(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """``[B]``: the fewest of each sample's highest ``scores [B, L]`` (non-negative; 0 where not a candidate) whose
    sum reaches ``tau`` of the sample's total (ZipVL's important set; ``tau`` in (0, 1))."""
    ranked = scores.float().sort(dim=1, descending=True).values.cumsum(dim=1)
    return (ranked < tau * ranked[:, -1:]).sum(dim=1) + 1


def probe_rows(text: torch.Tensor, valid: torch.Tensor, last: int, random: int) -> torch.Tensor:
    """``[B, L]``: ZipVL's probe queries, each sample's last ``last`` ``text`` rows and ``random`` of its ``valid``
    rows in a fixed pseudo-random order of the sample's own rows (a prompt gets the same probes in any batch)."""
    from_end = text.flip(1).long().cumsum(dim=1).flip(1)  # text rows at or after each row
    chosen = text & (from_end <= last)
    if random:
        ordinal = valid.long().cumsum(dim=1)
        noise = (ordinal * 2654435761) % 4294967296
        chosen |= top_k_mask(noise.float(), valid, torch.full((len(noise),), random))
    return chosen


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


def mean_with_arrivals(
    kept: torch.Tensor, arrivals: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Each row of ``kept [B, H, K, d]`` as the mean of itself and the ``arrivals [B, H, E, d]`` whose ``target
    [B, H, E]`` it is, each arrival counted ``weight [B, H, E]`` times (0: padding, merges nothing)."""
    spread = target[..., None].expand_as(arrivals)
    total = kept.scatter_add(2, spread, arrivals * weight[..., None])
    return total / torch.ones_like(kept[..., 0]).scatter_add(2, target, weight)[..., None]


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


def _greedy_start(values: torch.Tensor, valid: torch.Tensor | None, counts: torch.Tensor):
    """What every batched greedy loop starts from: ``(valid [B, n], width = max(counts), taken [B, n], chosen
    [B, width])``. ``counts`` are read on the host (the loop count), never from the device."""
    batch, n = values.shape[:2]
    valid = torch.ones(batch, n, dtype=torch.bool, device=values.device) if valid is None else valid.to(values.device)
    width = int(counts.max()) if len(counts) else 0
    chosen = torch.empty(batch, width, dtype=torch.long, device=values.device)
    return valid, width, ~valid, chosen


def _greedy_end(chosen: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``chosen [B, width]`` with the steps past each sample's own count marked ``-1``."""
    beyond = torch.arange(chosen.shape[1], device=chosen.device) >= counts.to(chosen.device)[:, None]
    return chosen.masked_fill(beyond, -1)


def _take(rows: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """``rows [B, n, m]``'s row ``pick[b]`` of each sample, ``[B, m]`` (a gather: no host round trip)."""
    return rows.gather(1, pick[:, None, None].expand(-1, 1, rows.shape[2]))[:, 0]


def ascending(chosen: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's chosen indices (``chosen [B, width]`` as the batched greedy helpers return them, ``-1`` past a
    sample's count), ascending, as one CPU tensor per sample (one device-to-host copy for the batch)."""
    order = chosen.masked_fill(chosen < 0, torch.iinfo(chosen.dtype).max).sort(dim=1).values.cpu()
    return [row[: int(count)] for row, count in zip(order, (chosen >= 0).sum(dim=1).cpu())]


def batched_greedy_max_min(
    distance: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Farthest-point selection for a batch: ``counts[b]`` of sample ``b``'s valid points chosen one at a time, each
    the point whose distance to the nearest point already chosen is largest (DivPrune's greedy max-min diversity).

    distance: ``[B, n, n]``, each symmetric with a zero diagonal; counts: ``[B]`` on the host; valid: ``[B, n]``
    bool (``None``: all; padding rows and columns are never chosen nor measured). The first point is the one
    farthest from its nearest neighbour. Ties go to the earlier point. Every step is a few batched device ops
    (argmax and gather, no host round trip). Returns ``[B, max(counts)]``: indices in the order chosen, ``-1``
    past ``counts[b]``.
    """
    valid, width, taken, chosen = _greedy_start(distance, valid, counts)
    distance = distance.float()
    n = distance.shape[1]
    own = torch.eye(n, dtype=torch.bool, device=distance.device)
    nearest = distance.masked_fill(own | ~valid[:, None, :], float("inf"))
    to_chosen = nearest.amin(dim=2)  # before any choice: a point's distance to its nearest neighbour
    for step in range(width):
        pick = to_chosen.masked_fill(taken, float("-inf")).argmax(dim=1)
        chosen[:, step] = pick
        taken.scatter_(1, pick[:, None], True)
        row = _take(distance, pick)
        to_chosen = row if step == 0 else torch.minimum(to_chosen, row)
    return _greedy_end(chosen, counts)


def greedy_max_min(distance: torch.Tensor, count: int) -> torch.Tensor:
    """``batched_greedy_max_min`` of one ``[n, n]`` distance matrix: ``[count]`` indices in the order chosen."""
    return batched_greedy_max_min(distance[None], torch.tensor([count]))[0]


def batched_greedy_dpp(
    kernel: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor | None = None, floor: float = 1e-10
) -> torch.Tensor:
    """Greedy MAP of a determinantal point process for a batch: ``counts[b]`` items of sample ``b``, each the one
    that most increases ``log det kernel[b][S, S]`` of the set ``S`` chosen so far, by incremental Cholesky (Chen et
    al., 2018: ``O(n k)`` memory, ``O(n k^2)`` time), in float64.

    kernel: ``[B, n, n]``, each symmetric positive semi-definite; counts: ``[B]`` on the host; valid: ``[B, n]``
    bool (``None``: all). Once no item of a sample adds volume (the gain falls to ``floor``: the kernel's rank is
    spent), its rest are chosen by their own diagonal entry (quality), highest first. Ties go to the earlier item.
    No host round trip inside the loop. Returns ``[B, max(counts)]``: indices in the order chosen, ``-1`` past
    ``counts[b]``.
    """
    valid, width, taken, chosen = _greedy_start(kernel, valid, counts)
    kernel = kernel.double()
    quality = kernel.diagonal(dim1=1, dim2=2)
    gains = quality.clone()  # d_i^2: the squared volume item i adds to the chosen set
    factors = kernel.new_zeros(kernel.shape[0], width, kernel.shape[1])  # rows of the incremental Cholesky factor
    spent = torch.zeros(kernel.shape[0], dtype=torch.bool, device=kernel.device)
    for step in range(width):
        by_gain = gains.masked_fill(taken, float("-inf")).argmax(dim=1)
        gain = gains.gather(1, by_gain[:, None])[:, 0]
        spent |= gain <= floor  # a spent sample stays spent: the rest by quality, as an argsort of it would give
        pick = torch.where(spent, quality.masked_fill(taken, float("-inf")).argmax(dim=1), by_gain)
        chosen[:, step] = pick
        taken.scatter_(1, pick[:, None], True)
        row = _take(kernel, pick)
        if step:
            row = (
                row
                - (factors[:, :step].gather(2, pick[:, None, None].expand(-1, step, 1)).mT @ factors[:, :step])[:, 0]
            )
        # spent samples no longer use their factors: keep them finite instead of dividing by a spent gain
        row = torch.where(spent[:, None], 0.0, row / gain.clamp(min=floor).sqrt()[:, None])
        factors[:, step] = row
        gains = gains - row**2
    return _greedy_end(chosen, counts)


def greedy_dpp(kernel: torch.Tensor, count: int, floor: float = 1e-10) -> torch.Tensor:
    """``batched_greedy_dpp`` of one ``[n, n]`` kernel: ``[count]`` indices in the order chosen."""
    return batched_greedy_dpp(kernel[None], torch.tensor([count]), floor=floor)[0]


def batched_greedy_diverse(
    scores: torch.Tensor,
    similarity: torch.Tensor,
    counts: torch.Tensor,
    weight: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``counts[b]`` items of sample ``b`` chosen one at a time by ``scores [B, n]`` (``>= 0``) discounted for
    redundancy: each step picks the highest ``scores[b, i] * (1 - weight * max(0, max similarity of i to the chosen
    items))``.

    similarity: ``[B, n, n]`` (cosine); counts: ``[B]`` on the host; valid: ``[B, n]`` bool (``None``: all).
    ``weight=0`` is the plain top ``counts[b]``. Ties go to the earlier item. No host round trip inside the loop.
    Returns ``[B, max(counts)]``: indices in the order chosen, ``-1`` past ``counts[b]``.
    """
    valid, width, taken, chosen = _greedy_start(scores, valid, counts)
    scores = scores.float()
    redundancy = torch.zeros_like(scores)
    for step in range(width):
        hybrid = scores * (1 - weight * redundancy)
        pick = hybrid.masked_fill(taken, float("-inf")).argmax(dim=1)
        chosen[:, step] = pick
        taken.scatter_(1, pick[:, None], True)
        redundancy = torch.maximum(redundancy, _take(similarity, pick).float().clamp(min=0))
    return _greedy_end(chosen, counts)


def greedy_diverse(scores: torch.Tensor, similarity: torch.Tensor, count: int, weight: float) -> torch.Tensor:
    """``batched_greedy_diverse`` of one item: ``scores [n]``, ``similarity [n, n]``; ``[count]`` indices in the order
    chosen."""
    return batched_greedy_diverse(scores[None], similarity[None], torch.tensor([count]), weight)[0]


def spatial_windows(grid: tuple[int, int, int], window: int) -> torch.Tensor:
    """The ``window x window`` tile of each token of a ``(frames, rows, cols)`` grid (raster order), ``[n]``: tiles
    do not overlap, never span two frames, and are numbered frame by frame, row-major; edge tiles may be smaller."""
    frames, rows, cols = grid
    tile_rows, tile_cols = -(-rows // window), -(-cols // window)
    row = torch.arange(rows).div(window, rounding_mode="floor")
    col = torch.arange(cols).div(window, rounding_mode="floor")
    per_frame = (row[:, None] * tile_cols + col[None, :]).flatten()
    return (torch.arange(frames)[:, None] * (tile_rows * tile_cols) + per_frame).flatten()


def window_similarity(features: torch.Tensor, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of ``tiles [n]`` (each token's window id), its size and the mean pairwise cosine similarity of its
    tokens' ``features [n, D]`` (0 for a window of one), on the CPU: ``[windows]`` each."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    sizes = torch.bincount(tiles)
    sums = torch.zeros(len(sizes), unit.shape[1]).index_add_(0, tiles, unit)
    return sizes, (sums.square().sum(dim=1) - sizes) / (sizes * (sizes - 1)).clamp(min=1)


def join_nearest(
    features: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Where each of ``n`` tokens goes when the tokens outside ``keep`` join the most similar of ``targets``.

    features: ``[n, D]``; keep: ``[k]`` ascending indices; targets: indices, a subset of ``keep``; groups: ``[n]``,
    optional: a token then joins only targets of its own group, and is dropped (``-1``) where there is none. Returns
    ``[n]``: the position in ``keep`` of the kept token each token goes to (a kept token: its own), by the cosine
    similarity of ``features``; ties go to the earlier target. ``merge_rows(features, result, k)`` then merges.
    """
    sources = torch.full((features.shape[0],), -1, dtype=torch.long)
    sources[keep] = torch.arange(len(keep))
    joiners = (sources < 0).nonzero().flatten()
    if len(joiners) and len(targets):
        unit = torch.nn.functional.normalize(features.float(), dim=-1)
        similarity = unit[joiners.to(unit.device)] @ unit[targets.to(unit.device)].T
        if groups is not None:
            other = groups[joiners][:, None] != groups[targets][None, :]
            similarity = similarity.masked_fill(other.to(similarity.device), float("-inf"))
        best, nearest = similarity.max(dim=1)
        sources[joiners] = torch.where(best.cpu() > float("-inf"), sources[targets[nearest.cpu()]], -1)
    return sources


def temporal_segments(frames: torch.Tensor, minimum: int, threshold: float) -> torch.Tensor:
    """Split a video into runs of similar consecutive frames (FastVID's dynamic segmentation).

    frames: ``[F, D]``, one feature per frame in temporal order. A new segment starts after each of the
    ``minimum - 1`` weakest transitions (lowest cosine similarity of adjacent frames; ties: the earlier) and after
    every transition whose similarity is below ``threshold``, so there are at least ``min(minimum, F)`` segments.
    Returns ``[F]`` long: each frame's segment, ``0, 1, ...`` non-decreasing.
    """
    unit = torch.nn.functional.normalize(frames.float(), dim=-1)
    similarity = (unit[:-1] * unit[1:]).sum(dim=-1)
    cut = similarity < threshold
    cut[similarity.argsort(stable=True)[: max(minimum - 1, 0)]] = True
    return torch.cat([cut.new_zeros(1), cut]).long().cumsum(dim=0)


def spread_evenly(totals: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each group's ``totals[g]`` spread over its members as evenly as possible, the earlier members taking the
    remainder. groups: ``[m]``, each member's group, members of a group consecutive. Returns ``[m]`` long."""
    sizes = torch.bincount(groups, minlength=len(totals))
    rank = torch.arange(len(groups)) - (sizes.cumsum(dim=0) - sizes)[groups]
    return totals[groups] // sizes[groups] + (rank < totals[groups] % sizes[groups]).long()


def split_proportionally(total: int, sizes: torch.Tensor) -> torch.Tensor:
    """``total`` split over groups of ``sizes [G]`` (ints, not all 0) in proportion to their size: the floors of
    the exact shares, then one more to the largest remainders (ties: the earlier group). Sums to ``total``; no group
    gets more than its size while ``total <= sizes.sum()``. Returns ``[G]`` long."""
    exact = total * sizes.double() / sizes.sum()
    counts = exact.floor().long()
    extra = (exact - counts).argsort(descending=True, stable=True)[: total - int(counts.sum())]
    return counts.index_add_(0, extra, torch.ones_like(extra))


def preferred_groups(
    groups: torch.Tensor, allowed: torch.Tensor, preferred: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Each group's candidates for ``counts[g]`` picks: its ``allowed & preferred`` points where they are at least
    ``counts[g]``, else all its ``allowed`` points. groups: ``[n]`` long (``0 .. G - 1``); allowed, preferred:
    ``[n]`` bool; counts: ``[G]``. Returns ``[n]``: the group of each candidate, ``-1`` elsewhere."""
    narrow = allowed & preferred
    few = torch.bincount(groups[narrow], minlength=len(counts)) < counts
    return torch.where(narrow | allowed & few[groups], groups, -1)


def grouped_density_peaks(
    points: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor, neighbours: int
) -> torch.Tensor:
    """``counts[g]`` density-peak centres (DPC-kNN over ``neighbours`` nearest, as ``batched_density_peaks``) among
    the ``points [n, D]`` of each group ``g`` (``groups [n]``: each point's group, ``-1``: none), all groups in one
    batched call. ``counts[g]`` may be 0 and must not exceed the group's size. Returns the centres' indices into
    ``points``, ascending, ``[counts.sum()]``."""
    groups, counts = groups.cpu(), counts.cpu()
    if int(counts.sum()) == 0:
        return torch.zeros(0, dtype=torch.long)
    members = (groups >= 0).nonzero().flatten()
    members = members[groups[members].argsort(stable=True)]  # by group, each group in index order
    group = groups[members]
    sizes = torch.bincount(group, minlength=len(counts))
    slot = torch.arange(len(members)) - (sizes.cumsum(dim=0) - sizes)[group]
    index = torch.full((len(counts), int(sizes.max())), -1, dtype=torch.long)
    index[group, slot] = members
    centres, centre_valid, _ = batched_density_peaks(
        points[index.clamp(min=0)], index >= 0, counts, torch.full_like(counts, neighbours)
    )
    return index.gather(1, centres.cpu())[centre_valid.cpu()].sort().values
