"""Write your own compression methods, outside vlmzip: one per stage, registered and used in one policy string.

Each method derives from its stage's contract (``vlmzip.stages``) and overrides only the steps it needs; the
runtime does the rest (hooks, attention capture, cutting every position-indexed input, the cache, stats).
See docs/extending.md. Runs on the CPU in seconds with a tiny random model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.selection import merge_rows
from vlmzip.stages import (
    Cut,
    DecodeMethod,
    LayerEntries,
    ModelInfo,
    OneCutMethod,
    PromptRows,
    VisionMethod,
    VisualItem,
    VisualSelection,
)


@vlmzip.register_method
@dataclass(frozen=True)
class PairMerge(VisionMethod):
    """Vision: average the most similar pairs of neighbouring tokens (0 and 1, 2 and 3, ...) into one token,
    placed where the first of the pair was, until ``keep`` tokens remain."""

    name = "pair-merge"
    keep: float = 0.5

    def select(self, item: VisualItem) -> VisualSelection:
        n = item.num_tokens
        merges = min(n // 2, n - self.budget(item))
        pairs = torch.arange(n // 2)
        features = item.features.float()
        similarity = F.cosine_similarity(features[2 * pairs], features[2 * pairs + 1], dim=-1)
        merged = pairs[similarity.cpu().argsort(descending=True)[:merges]]
        owner = torch.arange(n)
        owner[2 * merged + 1] = 2 * merged  # the second token of a merged pair joins the first
        keep = owner.unique()
        sources = torch.searchsorted(keep, owner)  # each token's survivor, by its rank among the survivors
        return VisualSelection(keep, merge_rows(item.features, sources, len(keep)), sources)


@vlmzip.register_method
@dataclass(frozen=True)
class TextMean(OneCutMethod):
    """Prefill: rank visual rows by the mean attention of all text tokens, and cut twice: before ``layer``
    (scored at ``layer - 1``) and before ``layer + 1`` (scored at ``layer``), keeping ``keep`` each time."""

    name = "text-mean"
    layer: int = 1

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        return (Cut(self.layer, self.keep, self.layer - 1), Cut(self.layer + 1, self.keep, self.layer))

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.text


@vlmzip.register_method
@dataclass(frozen=True)
class EveryOther(DecodeMethod):
    """Decode: keep ``keep`` of each layer's visual entries, every other one first (at 0.5: exactly every
    other one)."""

    name = "every-other"

    def score(self, entries: LayerEntries) -> torch.Tensor:
        ordinal = (entries.visual & entries.valid).long().cumsum(dim=1)  # 1, 2, ... over each sample's visual
        return (ordinal % 2).float()


if __name__ == "__main__":
    torch.manual_seed(0)
    model = tiny_model("qwen2_5_vl")
    inputs = random_inputs(model, [1, 2], text_lengths=[4, 9])  # a left-padded batch: one and two images
    policy = vlmzip.Policy.parse("pair-merge:keep=0.5+text-mean:layer=1,keep=0.5+every-other:keep=0.5")
    vlmzip.compress(model, policy)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    print(f"policy: {policy}; generated {out.shape[1] - inputs['input_ids'].shape[1]} tokens per prompt")
    print(vlmzip.stats(model))
    vlmzip.restore(model)
