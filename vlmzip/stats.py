"""What the last forward or ``generate`` of a compressed model did."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counts from the last request (a ``forward`` or a whole ``generate``), per sample of the batch.

    ``visual_tokens_kept`` maps each stage that cut the sequence (``"vision"``, ``"prefill"``) to the visual
    tokens per sample that remained after it (a prefill schedule: after its last cut), ``visual_positions_kept``
    their prompt positions (indices into ``input_ids``); ``visual_tokens_by_layer`` the visual tokens each
    decoder layer of the prompt pass processed, per sample (their mean over layers is a schedule's
    "equivalent tokens"); ``kv_entries`` / ``kv_visual_entries`` are the valid entries
    (all / visual) each layer's cache stores, per sample; ``kv_bytes`` is what the cache's tensors occupy,
    padding included.
    """

    policy: str
    visual_tokens_in: list[int]
    visual_tokens_kept: dict[str, list[int]] = field(default_factory=dict)
    visual_positions_kept: dict[str, list[list[int]]] = field(default_factory=dict)
    visual_tokens_by_layer: list[list[int]] = field(default_factory=list)
    kv_entries: list[list[int]] = field(default_factory=list)
    kv_visual_entries: list[list[int]] = field(default_factory=list)
    kv_bytes: int = 0

    def equivalent_visual_tokens(self) -> list[float]:
        """Per sample, the mean over the prompt pass's layers of the visual tokens each processed: what a
        schedule's budget is comparable by (equal to the kept count when every layer saw the same tokens)."""
        if not self.visual_tokens_by_layer:
            return [float(n) for n in self.visual_tokens_in]
        return [sum(layers) / len(layers) for layers in zip(*self.visual_tokens_by_layer)]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "equivalent_visual_tokens": self.equivalent_visual_tokens()}

    def __str__(self) -> str:
        lines = [f"policy: {self.policy}", f"visual tokens in:   {self.visual_tokens_in}"]
        lines += [f"kept after {stage + ':':<8} {kept}" for stage, kept in self.visual_tokens_kept.items()]
        if self.visual_tokens_by_layer:
            by_sample = [list(layers) for layers in zip(*self.visual_tokens_by_layer)]
            lines.append(f"visual tokens per layer, per sample: {by_sample}")
            equivalent = ", ".join(f"{n:.1f}" for n in self.equivalent_visual_tokens())
            lines.append(f"equivalent visual tokens (mean over layers): [{equivalent}]")
        for sample in range(len(self.visual_tokens_in) if self.kv_entries else 0):
            entries = [layer[sample] for layer in self.kv_entries if layer]
            visual = [layer[sample] for layer in self.kv_visual_entries if layer]
            lines.append(f"sample {sample} KV entries per layer: {entries} (visual: {visual})")
        if self.kv_entries:
            lines.append(f"KV bytes: {self.kv_bytes:,}")
        return "\n".join(lines)
