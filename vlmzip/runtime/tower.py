"""Pruning inside the vision tower (a vision method's ``at_layer``).

Before tower layer ``at_layer`` the method chooses each encoded image's language-model tokens from what the
tower has computed so far (its hidden states pooled to tokens, the attention of the earlier layers); the
remaining layers then run on the chosen tokens' patches only, which is where the time goes. After the tower,
its outputs are scattered back to full length (zeros where pruned), so the model pools, projects and merges
the features as it always does; the vision stage's cut at the language model then drops the pruned tokens with
the choice made here (``TowerCut.choices``), exactly as for a choice made after the tower.

Towers whose layers take ``[images, patches, D]`` hidden states (CLIP, SigLIP) are supported; the adapter maps
tokens to tower rows (``tower_tokens``, ``tower_rows``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlmzip.adapter import Adapter, VisionRun
from vlmzip.errors import UnsupportedModelError
from vlmzip.selection import gather_rows
from vlmzip.stages import VisionMethod, VisualItem


class TowerCut:
    """The in-tower choice of one session: hooks on the tower, and the tokens each encoded image keeps."""

    def __init__(
        self, adapter: Adapter, method: VisionMethod, runs: Callable[[], list[VisionRun]], flush: Callable[[], None]
    ) -> None:
        self.adapter, self.method = adapter, method
        self._runs, self._flush = runs, flush
        #: kept token indices (ascending) per encoded image, by its index among the request's encoded images
        self.choices: dict[int, torch.Tensor] = {}
        self._kept_rows: torch.Tensor | None = None  # [images, rows] of the current tower forward
        self._length = 0

    def install(self) -> list[Any]:
        layer = self.adapter.tower_layers()[self.method.at_layer]
        return [
            layer.register_forward_pre_hook(self._before_layer, with_kwargs=True),
            self.adapter.vision_tower.register_forward_hook(self._after_tower),
        ]

    def _before_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._flush()  # the attention of the layers before this one, for the method's signals
        runs = self._runs()
        first = sum(run.count for run in runs[:-1])
        tokens = self.adapter.tower_tokens(hidden)
        grid = self.adapter.tower_grid()
        items = [
            VisualItem(-1, first + i, "image", torch.arange(tokens.shape[1]), grid, kind_index=first + i)
            for i in range(tokens.shape[0])
        ]
        if "vision_attention" in self.method.needs:
            self.adapter.vision_scores(runs, items)
        for item, features in zip(items, tokens):
            item.features = features
        kept = []
        for item, selection in zip(items, self.method.select_batch(items), strict=True):
            if selection.merged:
                raise UnsupportedModelError(
                    f"{self.method.name}: merges tokens, which a choice inside the tower cannot do; drop at_layer"
                )
            self.choices[item.kind_index] = selection.keep
            kept.append(selection.keep)
        if len({len(k) for k in kept}) > 1:
            raise UnsupportedModelError(
                f"{self.method.name}: kept {sorted({len(k) for k in kept})} tokens in images of one tower batch; "
                "inside the tower every image must keep the same count (drop at_layer)"
            )
        if all(len(k) == tokens.shape[1] for k in kept):
            self._kept_rows = None
            return None
        self._kept_rows = self.adapter.tower_rows(torch.stack(kept).to(hidden.device))
        self._length = hidden.shape[1]
        cut = gather_rows(hidden, self._kept_rows, dim=1)
        return ((cut, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": cut})

    def _after_tower(self, module: nn.Module, args: tuple, output: Any) -> Any:
        rows, self._kept_rows = self._kept_rows, None
        if rows is None:
            return None
        for name in ("last_hidden_state", "hidden_states"):
            value = getattr(output, name, None)
            if isinstance(value, torch.Tensor):
                setattr(output, name, self._full_length(value, rows))
            elif isinstance(value, tuple):
                setattr(output, name, tuple(self._full_length(v, rows) for v in value))
        return output

    def _full_length(self, value: Any, rows: torch.Tensor) -> Any:
        """A ``[images, kept rows, D]`` tower output at full length, zeros in the pruned rows (left as they are:
        outputs of the layers before the cut)."""
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[1] != rows.shape[1]:
            return value
        full = value.new_zeros(value.shape[0], self._length, value.shape[2])
        return full.scatter(1, rows[..., None].expand_as(value), value)
