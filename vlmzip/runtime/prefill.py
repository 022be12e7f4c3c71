"""The prefill stage: the prefill method's cuts inside the prompt pass, and the attention it (and a decode method
asking for attention statistics) reads.

Decoder-layer pre-hooks carry out the schedule: before a layer whose attention a method reads, they note the
query rows to capture; before a cut layer, they ask the method for its selection and cut the hidden states;
before every later layer, they cut what the decoder stack passes to all layers (mask, rotary ``(cos, sin)``,
position ids), once per object. The session's attention function for the text config hands prompt-pass calls to
``attend``, which captures the query rows' attention while the model's own backend (or the method's ``attend``)
computes the layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vlmzip.runtime.attention import query_attention
from vlmzip.runtime.masks import cut_mask
from vlmzip.runtime.request import Request
from vlmzip.selection import gather_positions, gather_rows, pack_left
from vlmzip.stages import AttentionFunction, Cut, DecodeMethod, ModelInfo, PrefillMethod, PromptLayer

_CUT_INPUTS = ("attention_mask", "position_embeddings", "position_ids")


class PrefillStage:
    """The prompt pass of one session: its cuts, and its attention captures."""

    def __init__(
        self,
        method: PrefillMethod | None,
        decode: DecodeMethod | None,
        info: ModelInfo,
        text_config: Any,
        backend: str,
    ) -> None:
        self.method, self.text_config, self.backend = method, text_config, backend
        self.cuts: dict[int, Cut] = {cut.layer: cut for cut in method.schedule(info)} if method is not None else {}
        self.score_layers = {cut.score_layer: cut for cut in self.cuts.values() if cut.score_layer is not None}
        self.decode = decode if decode is not None and _overrides(decode, DecodeMethod, "query_rows") else None

    @property
    def needs_attention(self) -> bool:
        """Whether the text config needs vlmzip's attention function (scores to capture, or ``attend``)."""
        replaces = self.method is not None and self.method.supplies_attention
        return bool(self.score_layers) or replaces or self.decode is not None

    def before_layer(self, idx: int, request: Request, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Run the schedule before decoder layer ``idx`` of the prompt pass; returns the (cut) hidden states."""
        cut = self.cuts.get(idx)
        if cut is not None:
            hidden = self._cut(cut, request, hidden)
        if request.lm_index is not None:
            window = self._sliding_window(idx)
            for name in _CUT_INPUTS:
                if name in kwargs:
                    kwargs[name] = self._cut_input(request, name, kwargs[name], window, hidden.dtype)
        self._ask_for_attention(idx, request)
        request.visual_by_layer.append(list(request.visual_count))
        return hidden

    def _ask_for_attention(self, idx: int, request: Request) -> None:
        wanted = {}
        if idx in self.score_layers:
            wanted["prefill"] = self.method.query_rows(request.rows())
        if self.decode is not None and self._sliding_window(idx) is None:
            wanted["decode"] = self.decode.query_rows(request.rows())
        request.queries[idx] = {
            consumer: pack_left(rows & request.rows_valid) for consumer, rows in wanted.items() if rows is not None
        }

    def _cut(self, cut: Cut, request: Request, hidden: torch.Tensor) -> torch.Tensor:
        attention = request.attention.get(("prefill", cut.score_layer))
        rows = request.rows()
        rows = dataclasses.replace(rows, hidden=hidden)
        selection = self.method.select(cut, rows, self.method.score(cut, attention, rows))
        counts = selection.counts
        if request.protected is not None:  # a vision method's key set: kept beside the cut's choice
            protected = request.protected.gather(1, rows.position)
            selection = dataclasses.replace(selection, keep=selection.keep | protected, counts=None)
            counts = None
        if counts is None:
            counts = (selection.keep & rows.visual).sum(dim=1).tolist()
        if counts == request.visual_count and selection.hidden is None:
            request.record("prefill", counts)
            return hidden
        keep = rows.text | (selection.keep & rows.visual)
        index, valid = pack_left(keep, request.width_after(counts))
        lm_index = index if request.lm_index is None else request.lm_index.gather(1, index)
        request.set_rows(valid, request.rows_prompt.gather(1, index), lm_index)
        request.record("prefill", counts)
        source = hidden if selection.hidden is None else selection.hidden.to(hidden.dtype)
        return gather_rows(source, index, dim=1)

    def _cut_input(self, request: Request, name: str, value: Any, window: int | None, dtype: torch.dtype) -> Any:
        """A language-model input indexed by its rows (mask, rotary ``(cos, sin)``, positions), cut to the
        rows the hidden states hold now; computed once per object and shared by all later layers."""
        key = (name, id(value), window)
        if key in request.cut_inputs:
            return request.cut_inputs[key][1]
        index, valid = request.lm_index, request.rows_valid
        if name == "attention_mask":  # None (plain causal) becomes a real mask: the cut added padding
            cut = cut_mask(value, index, valid, self.backend, window, dtype, self.text_config)
        elif value is None:
            cut = None
        elif isinstance(value, tuple):
            cut = tuple(gather_rows(part, index, dim=part.dim() - 2) for part in value)
        else:
            cut = gather_positions(value, index)
        request.cut_inputs[key] = (value, cut)  # holding `value` keeps its id from being reused
        return cut

    def _sliding_window(self, idx: int) -> int | None:
        layer_types = getattr(self.text_config, "layer_types", None)
        if layer_types and layer_types[idx] == "sliding_attention":
            return self.text_config.sliding_window
        return None

    def attend(self, request: Request, base: AttentionFunction, module, query, key, value, attention_mask, **kwargs):
        """A prompt-pass layer's attention: capture the query rows asked for, then the method's ``attend`` (or the
        model's own ``base``)."""
        for consumer, (rows, valid) in request.queries.get(module.layer_idx, {}).items():
            request.attention[consumer, module.layer_idx] = query_attention(
                module, query, key, attention_mask, rows, valid, kwargs
            )
        if self.method is None or not self.method.supplies_attention:
            return base(module, query, key, value, attention_mask, **kwargs)
        idx = module.layer_idx
        rows = request.rows()
        layer = PromptLayer(
            idx,
            rows,
            list(request.rows_count),
            request.items_by_row().gather(1, request.rows_prompt),
            self._sliding_window(idx),
            lambda density: request.attention_density.__setitem__(idx, density),
        )
        request.attention_density[idx] = None  # dense unless the method records otherwise
        return self.method.attend(layer, base, module, query, key, value, attention_mask, **kwargs)


def _overrides(method: object, base: type, step: str) -> bool:
    """Whether ``method``'s class replaces ``base``'s ``step`` (the runtime only pays for steps in use)."""
    return getattr(type(method), step) is not getattr(base, step)
