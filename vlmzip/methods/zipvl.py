"""ZipVL (prefill part): each sample keeps the fewest visual tokens that hold ``tau`` of the probes' attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import probe_rows, share_count
from vlmzip.stages import Cut, OneCutMethod, PromptRows


@register_method
@dataclass(frozen=True)
class ZipVL(OneCutMethod):
    """ "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification" (prefill part).

    Probe queries (the last ``probes`` text tokens and ``random_probes`` random prompt rows) give the attention
    each visual token receives at layer ``layer - 1``; before ``layer`` each sample keeps the smallest set of
    visual tokens whose share of that attention reaches ``tau``, so the ratio adapts to every input (samples of
    a batch keep different counts), at most ``keep``; ``tau=1`` keeps them all. Published: tau 0.96-0.975,
    64 + 64 probes.
    """

    name = "zipvl"
    paper = "arXiv:2410.08584"
    title = "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification"
    deviation = (
        "prunes visual tokens once, before `layer`, where the paper picks important tokens per layer for sparse "
        "attention; the cumulative share is of the attention paid to visual tokens (text is always kept); "
        "`keep` caps the count (default: no cap)"
    )
    keep: Keep = 1.0
    tau: float = 0.975
    probes: int = 64
    random_probes: int = 64

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.tau <= 1.0:
            raise PolicyError(f"zipvl: tau={self.tau} must be in (0, 1] (the published range is 0.96-0.975)")
        if self.probes < 1 or self.random_probes < 0:
            raise PolicyError(f"zipvl: probes={self.probes} must be >= 1 and random_probes >= 0")

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return probe_rows(rows.text, rows.valid, self.probes, self.random_probes)

    def budget(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        if self.tau >= 1.0:  # all the attention: every visual token (cumulative sums may reach it early)
            return [min(kept_count(self.keep, n), held) for n, held in zip(rows.visual_in, rows.visual_count)]
        needed = share_count(torch.where(rows.visual, scores.float(), 0.0), self.tau)
        caps = [kept_count(self.keep, n) for n in rows.visual_in]
        return [min(need, cap, held) for need, cap, held in zip(needed.tolist(), caps, rows.visual_count)]
