"""SparseVLM: visual tokens ranked by the attention of the text tokens most relevant to them, dropped in stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.scoring import rater_rows
from vlmzip.selection import cluster_means, gather_rows, top_k_mask
from vlmzip.stages import EquivalentSchedule, PromptRows, QueryAttention, RowSelection, ScheduleCut


@register_method
@dataclass(frozen=True)
class SparseVLM(EquivalentSchedule):
    """ "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference" (Gumpest/SparseVLMs).

    Text raters are the instruction tokens whose relevance to the visual tokens (a softmax over the instruction of
    visual x text hidden-state products, averaged over the visual tokens) is above the mean; a visual token's score
    is the raters' head-averaged attention to it, averaged over raters, at the layer before each cut. With
    ``recycle`` the top 30% (+1) of the dropped tokens by score are clustered (DPC-kNN on their hidden states, one
    cluster per 10 of them, + 1) and each cluster is averaged into one token at its centre's row. Published: cuts
    at layers 2/6/15 of 32 with budgets [66, 30, 17] for 64 equivalent tokens of 576, [238, 48, 26] for 96,
    [303, 110, 36] for 128, [300, 200, 110] for 192; ``keep`` is the equivalent tokens (default 64).
    """

    name = "sparsevlm"
    paper = "arXiv:2410.04417"
    title = "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference"
    deviation = (
        "raters are chosen at every cut from the hidden states entering it (the reference: once, from the language "
        "model's input); cuts come before layers 2/6/15 scored by the layer before (the reference scores layer 2 and "
        "cuts after it); the published budgets nearest `keep` are scaled so the mean over layers is exactly `keep`; "
        "recycled tokens count within a cut's budget and keep their centre's position (the reference adds them "
        "after the kept ones, renumbering positions); layers for 32 layers scaled to the model's depth"
    )
    budgets = {64: (66, 30, 17), 96: (238, 48, 26), 128: (303, 110, 36), 192: (300, 200, 110)}
    recycle: bool = True

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.instruction  # the raters among them are chosen at the cut, from its hidden states

    def score(self, cut: ScheduleCut, attention: QueryAttention, rows: PromptRows) -> torch.Tensor:
        raters = rater_rows(rows.hidden, rows.visual, rows.instruction).gather(1, attention.rows)
        raters = (raters & attention.valid).float()
        return (raters[:, :, None] * attention.probs).sum(dim=1) / raters.sum(dim=1, keepdim=True).clamp(min=1)

    def select(self, cut: ScheduleCut, rows: PromptRows, scores: torch.Tensor) -> RowSelection:
        counts = self.budget(cut, rows, scores)
        dropped = [held - count for held, count in zip(rows.visual_count, counts)]
        if not self.recycle or not any(dropped):
            return RowSelection(top_k_mask(scores, rows.visual, torch.tensor(counts)), counts=counts)
        recycled = [int(0.3 * d) + 1 if d else 0 for d in dropped]  # the reference's top 30% (+1) of the dropped
        clusters = [min(count, r // 10 + 1) if r else 0 for count, r in zip(counts, recycled)]
        by_score = torch.tensor([count - c for count, c in zip(counts, clusters)])
        keep = top_k_mask(scores, rows.visual, by_score)
        pool = top_k_mask(scores, rows.visual, by_score + torch.tensor(recycled)) & ~keep
        # each sample's pool, best score first (ties: the earlier row, as the reference's topk)
        members = torch.where(pool, scores.float(), float("-inf")).argsort(dim=1, descending=True, stable=True)
        members, recycled = members[:, : max(recycled)], torch.tensor(recycled, device=scores.device)
        in_pool = torch.arange(members.shape[1], device=scores.device) < recycled[:, None]
        centres, real, merged = cluster_means(gather_rows(rows.hidden, members, dim=1), in_pool, torch.tensor(clusters))
        sample, slot = real.nonzero(as_tuple=True)
        rows_of_centres = members.gather(1, centres)[sample, slot]
        hidden = rows.hidden.index_put((sample, rows_of_centres), merged[sample, slot].to(rows.hidden.dtype))
        keep[sample, rows_of_centres] = True
        return RowSelection(keep, hidden, counts)
