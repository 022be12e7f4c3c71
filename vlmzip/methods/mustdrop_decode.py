"""MustDrop (decode part): cut every layer's cache down to the visual tokens that survived the prefill stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import DecodeMethod, LayerEntries, ModelInfo, PromptRows


@register_method
@dataclass(frozen=True)
class MustDropDecode(DecodeMethod):
    """ "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model" (decode part).

    Output-aware cache policy: a multi-cut prefill stage leaves the layers before its last cut holding visual
    entries that a later cut found useless for the output; from layer ``from_layer`` on, each full-attention layer
    keeps only the visual entries that survived every cut (``LayerEntries.survived``), text entries all. Published:
    from layer 2 of LLaVA-1.5's 32 (the authors' code leaves layers 0 and 1 whole). ``keep`` caps the visual
    entries of every layer (default: no cap), the survivors first, then by the instruction rows' attention.
    """

    name = "mustdrop-decode"
    paper = "arXiv:2411.10803"
    title = "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model"
    deviation = (
        "the decode stage only (pair it with `mustdrop` at the prefill stage; alone it keeps everything); "
        "`from_layer` is not scaled to the model's depth; `keep` (a cap ranked by the instruction's attention) "
        "is vlmzip's"
    )
    keep: Keep = 1.0
    from_layer: int = 2

    def validate(self) -> None:
        if self.from_layer < 0:
            raise PolicyError(f"mustdrop-decode: from_layer={self.from_layer} must be >= 0 (0 cuts every layer)")

    def check_model(self, info: ModelInfo) -> None:
        super().check_model(info)
        if self.from_layer >= info.num_layers:
            raise PolicyError(
                f"mustdrop-decode: from_layer={self.from_layer} is beyond the language model's depth "
                f"({info.num_layers} layers: use 0..{info.num_layers - 1})"
            )

    def query_rows(self, rows: PromptRows) -> torch.Tensor | None:
        capped = not (isinstance(self.keep, float) and self.keep >= 1.0)
        return rows.instruction if capped else None  # attention is captured only where a cap ranks by it

    def score(self, entries: LayerEntries) -> torch.Tensor:
        attention = entries.attention if entries.attention is not None else torch.zeros_like(entries.valid)
        return attention.float() + 2.0 * entries.survived  # attention means are <= 1: survivors rank first

    def budget(self, entries: LayerEntries) -> list[int]:
        caps = [kept_count(self.keep, n) for n in entries.visual_count]
        if entries.layer < self.from_layer:
            return caps
        survivors = (entries.survived & entries.visual).sum(dim=1).tolist()
        return [min(cap, n) for cap, n in zip(caps, survivors)]
