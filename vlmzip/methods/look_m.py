"""LOOK-M: evict the visual KV entries the text attends to least, and merge each into its most similar kept entry."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.scoring import best_cosine_match
from vlmzip.selection import gather_rows, mean_with_arrivals, pack_left
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
    The merges follow the authors' code. Published: pivotal merging with 10% of the cache kept by score and a 10%
    recent window, hence ``keep=0.2``."""

    name = "look-m"
    paper = "arXiv:2406.18139"
    title = "LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference"
    deviation = (
        "text rows' head-averaged attention over visual entries (text kept), where the authors' code accumulates every "
        "prompt row's attention per head over all entries plus a 10% recent window; `weighted` merges every evicted "
        "entry, not only those of above-average similarity"
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
        if (selected := self.select(entries)) is None:
            return None
        keep, stored = selected
        index, valid = pack_left(keep, max(stored))
        gone, gone_valid = pack_left(entries.valid & ~keep, max(n - s for n, s in zip(entries.count, stored)))
        keys, values = ([gather_rows(t, i, 2).float() for i in (index, gone)] for t in (entries.keys, entries.values))
        similarity, target = best_cosine_match(keys[1], keys[0], valid)
        weight = gone_valid[:, None, :].to(target.device).expand_as(target).float()  # padding merges nothing
        merged = [self._merge(kept, evicted, target, similarity, weight) for kept, evicted in (keys, values)]
        return StoredEntries(index, stored, DenseKV(*(m.to(entries.keys.dtype) for m in merged)))

    def _merge(self, kept: Tensor, evicted: Tensor, target: Tensor, similarity: Tensor, weight: Tensor) -> Tensor:
        """Each kept entry ``[B, H, K, d]`` becomes the mean of itself and the evicted entries ``[B, H, E, d]`` whose
        ``target`` it is: as they are, as midpoints with it, or scaled by their ``similarity``."""
        if self.merge == "pivotal":  # the kept entry is the pivot: an evicted one arrives as their midpoint
            evicted = (evicted + kept.gather(2, target[..., None].expand_as(evicted))) / 2
        elif self.merge == "weighted":
            evicted = evicted * similarity[..., None]
        return mean_with_arrivals(kept, evicted, target, weight)
