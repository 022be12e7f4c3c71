"""The state of one request (a plain forward, or a ``generate`` call: its prompt pass and decode steps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmzip.runtime.cache import CompressedCache, RowMeta
from vlmzip.stages import PromptRows, QueryAttention, VisualItem


@dataclass
class Request:
    """What the stages share about one request.

    During the prompt pass the rows the hidden states hold are tracked as ``[B, L_now]`` tensors (validity,
    visual or not, column of the original prompt, and index into the language model's input rows, ``None``
    until a prefill cut) and, on the host, as per-sample counts, so cuts need no device round trip.
    """

    inputs: dict[str, Any]  # the model's forward arguments of the prompt pass
    prompt_valid: torch.Tensor  # [B, L] non-padding rows of the prompt
    cache_ref: Callable[[], CompressedCache | None]  # weak: the caller owns the cache and frees it
    items: list[VisualItem] = field(default_factory=list)
    visual: torch.Tensor | None = None  # [B, L] visual placeholder rows of the prompt
    protected: torch.Tensor | None = None  # [B, L] prompt rows no later cut may drop (a vision method's key set)
    phase: str = "prefill"
    step: int = 0  # forwards done: 0 during the prompt pass
    step_length: int = 0
    rows_valid: torch.Tensor | None = None
    rows_visual: torch.Tensor | None = None
    rows_prompt: torch.Tensor | None = None
    lm_index: torch.Tensor | None = None
    rows_count: list[int] = field(default_factory=list)  # rows held now, per sample
    visual_count: list[int] = field(default_factory=list)  # visual rows among them
    visual_in: list[int] = field(default_factory=list)
    kept: dict[str, list[int]] = field(default_factory=dict)
    kept_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (prompt rows, kept)
    visual_by_layer: list[list[int]] = field(default_factory=list)  # visual rows each prompt-pass layer processed
    # query rows each consumer ("prefill", "decode") wants attention captured for, by layer; and what was captured
    queries: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    attention: dict[tuple[str, int], QueryAttention] = field(default_factory=dict)
    cut_inputs: dict[tuple, tuple[Any, Any]] = field(default_factory=dict)  # (name, id, window) -> (original, cut)
    step_rows: RowMeta | None = None  # the rows a decode step feeds every layer
    step_masks: dict[tuple, tuple] = field(default_factory=dict)  # one mask per distinct cache-layer history
    # what the cache held after the last forward: (valid, visual) per layer, and its stores (below)
    kv_rows: list[tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    kv_stores: list[Any] = field(default_factory=list)  # each layer's KVStore (None: empty), bytes counted on demand
    # the share of causal attention blocks each prompt-pass layer computed, per sample ([B] tensor; None: dense),
    # for layers whose attention a prefill method supplied; read on the host only when stats are asked for
    attention_density: dict[int, torch.Tensor | None] = field(default_factory=dict)
    _rows: PromptRows | None = None
    _items: torch.Tensor | None = None

    def set_rows(self, valid: torch.Tensor, prompt: torch.Tensor, lm_index: torch.Tensor | None) -> None:
        self.rows_valid, self.rows_prompt, self.lm_index = valid, prompt, lm_index
        self.rows_visual = self.visual.gather(1, prompt) & valid
        self.cut_inputs.clear()
        self._rows = None

    def rows(self) -> PromptRows:
        """The rows held now, as methods see them."""
        if self._rows is None:
            self._rows = PromptRows(
                self.rows_valid, self.rows_visual, self.rows_prompt, list(self.visual_count), self.visual_entering
            )
        return self._rows

    def items_by_row(self) -> torch.Tensor:
        """``[B, L]`` over the prompt's columns: the visual item each belongs to (its order in the sample), -1 text."""
        if self._items is None:
            self._items = torch.full_like(self.prompt_valid, -1, dtype=torch.long)
            for item in self.items:
                self._items[item.sample, item.positions.to(self._items.device)] = item.sample_index
        return self._items

    def density_by_layer(self) -> list[list[float]]:
        """``attention_density`` as per-layer lists of per-sample floats (1.0 where a layer ran dense)."""
        batch = len(self.rows_count)
        return [
            [1.0] * batch if density is None else density.float().tolist()
            for _, density in sorted(self.attention_density.items())
        ]

    def record(self, stage: str, visual_count: list[int]) -> None:
        """Remember what the rows hold after ``stage``: ``visual_count`` visual tokens per sample (their
        prompt positions are read when stats are asked for)."""
        self.rows_count = [rows - old + new for rows, old, new in zip(self.rows_count, self.visual_count, visual_count)]
        self.visual_count = self.kept[stage] = list(visual_count)
        self.kept_rows[stage] = (self.rows_prompt, self.rows_visual & self.rows_valid)
        self._rows = None

    @property
    def visual_entering(self) -> list[int]:
        """Visual rows per sample the language model received (after the vision stage)."""
        return list(self.kept.get("vision", self.visual_in))

    def width_after(self, visual_count: list[int]) -> int:
        """Rows of the packed batch once each sample holds ``visual_count`` visual rows."""
        return max(rows - old + new for rows, old, new in zip(self.rows_count, self.visual_count, visual_count))

    def kept_positions(self) -> dict[str, list[list[int]]]:
        return {
            stage: [row[mask].tolist() for row, mask in zip(prompt, kept)]
            for stage, (prompt, kept) in self.kept_rows.items()
        }
