"""What the last forward or ``generate`` of a compressed model did."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counts from the last request (a ``forward`` or a whole ``generate``), per sample of the batch.

    ``visual_tokens_kept`` maps each stage that cut the sequence (``"vision"``, ``"prefill"``) to the visual tokens per
    sample that remained after it (a prefill schedule: after its last cut), ``visual_positions_kept`` their prompt
    positions (indices into ``input_ids``); ``visual_tokens_by_layer`` the visual tokens each decoder layer of the
    prompt pass processed, per sample (their mean over layers is a schedule's "equivalent tokens"); ``kv_entries`` /
    ``kv_visual_entries`` are the valid entries (all / visual) each layer's cache stores, per sample; ``kv_bytes`` is
    what the cache's tensors occupy, padding included, and ``kv_bytes_by_layer`` the same per layer and kind:
    ``payload`` (packed codes), ``scales`` and ``zeros`` (their per-group scales and zero points) and ``full`` (entries
    in the model's dtype: an unquantized layer, or a quantized one's full-precision window). Samples share every tensor
    of a layer, so a sample's share of a layer's bytes is that layer's bytes over the batch size. ``attention_density``
    is, for each prompt-pass layer whose attention a prefill method supplied (block-sparse prefill; empty otherwise),
    per sample, the share of the layer's causal attention blocks (over heads) that were computed: 1.0 where the layer
    ran dense (a prompt shorter than the method's ``min_length``, or a mask the sparse kernel cannot express).
    """

    policy: str
    visual_tokens_in: list[int]
    visual_tokens_kept: dict[str, list[int]] = field(default_factory=dict)
    visual_positions_kept: dict[str, list[list[int]]] = field(default_factory=dict)
    visual_tokens_by_layer: list[list[int]] = field(default_factory=list)
    kv_entries: list[list[int]] = field(default_factory=list)
    kv_visual_entries: list[list[int]] = field(default_factory=list)
    kv_bytes: int = 0
    kv_bytes_by_layer: list[dict[str, int]] = field(default_factory=list)
    attention_density: list[list[float]] = field(default_factory=list)

    def mean_attention_density(self) -> list[float]:
        """Per sample, the mean over the sparse-attention layers of ``attention_density`` (1.0 when none)."""
        if not self.attention_density:
            return [1.0] * len(self.visual_tokens_in)
        return [sum(layers) / len(layers) for layers in zip(*self.attention_density)]

    def kv_bytes_by_kind(self) -> dict[str, int]:
        """``kv_bytes`` split into ``payload``, ``scales``, ``zeros`` and ``full`` (summed over layers)."""
        total: dict[str, int] = {}
        for layer in self.kv_bytes_by_layer:
            for kind, count in layer.items():
                total[kind] = total.get(kind, 0) + count
        order = ["payload", "scales", "zeros", "full"]  # then anything a custom store reports
        return dict(sorted(total.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))

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
        if self.attention_density:
            density = ", ".join(f"{d:.3f}" for d in self.mean_attention_density())
            lines.append(f"attention blocks computed (mean over layers, per sample): [{density}]")
        for sample in range(len(self.visual_tokens_in) if self.kv_entries else 0):
            entries = [layer[sample] for layer in self.kv_entries if layer]
            visual = [layer[sample] for layer in self.kv_visual_entries if layer]
            lines.append(f"sample {sample} KV entries per layer: {entries} (visual: {visual})")
        if self.kv_entries:
            kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.kv_bytes_by_kind().items())
            lines.append(f"KV bytes: {self.kv_bytes:,}" + (f" ({kinds})" if kinds else ""))
        return "\n".join(lines)
