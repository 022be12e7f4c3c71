"""SnapKV: keep the visual KV entries that the last prompt rows (the observation window) attend to most, pooled."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import DecodeMethod, LayerEntries, PromptRows


@register_method
@dataclass(frozen=True)
class SnapKV(DecodeMethod):
    """ "SnapKV: LLM Knows What You are Looking for Before Generation" (Li et al., 2024).

    The last ``window`` prompt rows (the observation window) vote for the entries before them: the attention they
    put on each, summed over the window and averaged over the layer's heads, is max-pooled along the sequence
    (``kernel`` wide) so that neighbours of a strong entry survive with it. Each layer keeps its ``keep`` visual
    entries of highest pooled score, the window's own entries first; text entries are never evicted. Published
    (LongBench): window 32, max pooling with kernel 7.
    """

    name = "snapkv"
    paper = "arXiv:2404.14469"
    title = "SnapKV: LLM Knows What You are Looking for Before Generation"
    deviation = (
        "keeps one set per layer (the window's attention averaged over heads) and evicts visual entries only, where "
        "SnapKV keeps a set per head over all prompt entries; the window's own visual entries are kept first but "
        "count within `keep` (SnapKV keeps the window beside a budget of 1024-4096 entries, so `keep` has no "
        "published default); the window's mean attention stands for its sum (one factor per sample); after a prefill "
        "cut, pooling runs over the stored entries"
    )
    window: int = 32
    kernel: int = 7

    def validate(self) -> None:
        if self.window < 1:
            raise PolicyError(f"snapkv: window={self.window} must be >= 1 (the last prompt rows that vote)")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise PolicyError(f"snapkv: kernel={self.kernel} must be an odd number >= 1 (1: no pooling)")

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return _last(rows.valid, self.window)

    def score(self, entries: LayerEntries) -> torch.Tensor:
        window = _last(entries.valid, self.window)  # at step 0 the entries are the rows the layer held
        votes = torch.where(window, 0.0, entries.attention.float())  # the window's own keys do not vote
        pooled = F.max_pool1d(votes[:, None], self.kernel, stride=1, padding=self.kernel // 2)[:, 0]
        return torch.where(window, torch.inf, pooled)  # SnapKV keeps the window whole


def _last(valid: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, L]``: each sample's last ``count`` valid rows (padding is on the left)."""
    from_end = valid.flip(1).long().cumsum(dim=1).flip(1)
    return valid & (from_end <= count)
