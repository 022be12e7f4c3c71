"""PyramidDrop: drop visual tokens in stages, keeping a constant share at each stage boundary."""

from __future__ import annotations

from dataclasses import dataclass

from vlmzip.budget import Keep, kept_count
from vlmzip.registry import register_method
from vlmzip.stages import Cut, ModelInfo, PrefillMethod, PromptRows, scale_layers, validate_layers


@dataclass(frozen=True)
class _Stage(Cut):
    step: int = 1  # this is cut `step` of `steps`
    steps: int = 1


@register_method
@dataclass(frozen=True)
class PyramidDrop(PrefillMethod):
    """ "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy Reduction"
    (Cooperx521/PyramidDrop).

    At each stage boundary the last instruction token's attention, averaged over heads, ranks the visual tokens
    still held; each stage keeps the same share of them, so that ``keep`` (a fraction of the visual tokens the
    language model received, or a count) remain after the last stage. Published defaults: boundaries at layers
    8/16/24 of 32 (``layers``, given for a ``depth``-layer model and scaled to the model's), keep 0.125 (a share of
    0.5 per stage, the paper's lambda).
    """

    name = "pyramiddrop"
    paper = "arXiv:2410.17247"
    title = "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy Reduction"
    deviation = (
        "each boundary is scored by the attention the layer before it paid (captured while the model keeps its "
        "backend), where the reference recomputes the boundary layer's query and key projections; layers given "
        "for 32 layers are scaled to the model's depth"
    )
    layers: tuple[int, ...] = (8, 16, 24)
    depth: int = 32
    keep: Keep = 0.125

    def validate(self) -> None:
        validate_layers(self.name, self.layers, self.depth)

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        layers = scale_layers(self.layers, self.depth, info)
        return tuple(_Stage(layer, self.keep, layer - 1, i + 1, len(layers)) for i, layer in enumerate(layers))

    def budget(self, cut: _Stage, rows: PromptRows, scores) -> list[int]:
        # a geometric pyramid from each sample's n visual tokens down to its final count
        counts = []
        for n, held in zip(rows.visual_in, rows.visual_count):
            final = kept_count(self.keep, n)
            counts.append(min(held, max(final, round(n * (final / max(n, 1)) ** (cut.step / cut.steps)))))
        return counts
