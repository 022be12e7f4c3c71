"""LOOK-M: evict the visual KV entries the text attends to least, and merge each into its most similar kept entry."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import gather_rows, pack_left
from vlmzip.stages import DecodeMethod, DenseKV, LayerEntries, PromptRows, StoredEntries

MERGES = ("average", "pivotal", "weighted")


@register_method
@dataclass(frozen=True)
class LookM(DecodeMethod):
    """ "LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference" (Wan et al.).

    Text-prior eviction: text entries are all kept, and each layer keeps the ``keep`` visual entries that the
    prompt's text rows attend to most. Each evicted entry is then merged, per KV head, into the kept entry whose key
    is most similar (cosine): a kept entry becomes the mean of itself and what merged into it, taken as is
    (``average``), as its midpoint with the kept one (``pivotal``) or scaled by the similarity (``weighted``).
    The merges follow the authors' code. Published: pivotal merging (their main setting) with 10% of the cache kept
    by score and a 10% recent window, hence ``keep=0.2``; 80-95% of the cache evicted.
    """

    name = "look-m"
    paper = "arXiv:2406.18139"
    title = "LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference"
    deviation = (
        "scores by the text rows' head-averaged attention and budgets visual entries only (text always kept), "
        "where the authors' code accumulates every prompt row's attention per head and budgets 10% of all entries "
        "by score plus a 10% recent window; `weighted` merges every evicted entry (the code only those of "
        "above-average similarity)"
    )
    keep: Keep = 0.2
    merge: str = "pivotal"

    def validate(self) -> None:
        if self.merge not in MERGES:
            raise PolicyError(f"look-m: merge={self.merge!r} must be one of {', '.join(MERGES)}")

    def query_rows(self, rows: PromptRows) -> Tensor:
        return rows.text

    def score(self, entries: LayerEntries) -> Tensor:
        return entries.attention

    def compress(self, entries: LayerEntries) -> StoredEntries | None:
        selected = self.select(entries)
        if selected is None:
            return None
        keep, stored = selected
        index, valid = pack_left(keep, max(stored))
        gone, gone_valid = pack_left(entries.valid & ~keep, max(n - s for n, s in zip(entries.count, stored)))
        keys, values = (  # each (kept [B, H, K, d], evicted [B, H, E, d])
            [gather_rows(t, rows, dim=2).float() for rows in (index, gone)] for t in (entries.keys, entries.values)
        )
        similarity, target = _most_similar(keys[1], keys[0], valid)
        weight = gone_valid[:, None, :].to(target.device).expand_as(target).float()  # padding merges nothing
        merged = [self._merge(kept, evicted, target, similarity, weight) for kept, evicted in (keys, values)]
        return StoredEntries(index, stored, DenseKV(*(m.to(entries.keys.dtype) for m in merged)))

    def _merge(self, kept: Tensor, evicted: Tensor, target: Tensor, similarity: Tensor, weight: Tensor) -> Tensor:
        """Each kept entry ``[B, H, K, d]`` becomes the mean of itself and the evicted entries ``[B, H, E, d]`` whose
        ``target`` it is: as they are, as midpoints with it, or scaled by their ``similarity``."""
        spread = target[..., None].expand_as(evicted)
        if self.merge == "pivotal":  # the kept entry is the pivot: an evicted one arrives as their midpoint
            evicted = (evicted + kept.gather(2, spread)) / 2
        elif self.merge == "weighted":
            evicted = evicted * similarity[..., None]
        total = kept.scatter_add(2, spread, evicted * weight[..., None])
        return total / torch.ones_like(kept[..., 0]).scatter_add(2, target, weight)[..., None]


def _most_similar(evicted: Tensor, kept: Tensor, valid: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per head, each evicted key's best cosine similarity to a valid kept key, and that key's index: ``[B, H, E]``
    each. The ``[E, K]`` similarities are formed ``chunk`` evicted keys at a time (a long video evicts thousands)."""
    kept = F.normalize(kept.float(), dim=-1).transpose(-1, -2)
    padding = ~valid.to(kept.device)[:, None, None, :]
    best = [
        (F.normalize(part.float(), dim=-1) @ kept).masked_fill(padding, -torch.inf).max(dim=-1)
        for part in evicted.split(chunk, dim=2)
    ]
    return torch.cat([b.values for b in best], dim=2), torch.cat([b.indices for b in best], dim=2)
