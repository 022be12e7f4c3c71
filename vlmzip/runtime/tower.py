"""Pruning inside (or before) the vision tower: a vision method's ``tower_layer``.

Before tower layer ``L`` the method chooses each encoded item's language-model tokens from what the tower has
computed so far (its hidden states pooled to tokens, the attention of the earlier layers, the pixels it was given);
layers ``L`` and later then run on the chosen tokens' rows only, which is where the time goes. The tower's outputs
are scattered back to full length (zeros where pruned), so the model pools, projects and merges the features as it
always does; the vision stage's cut at the language model then drops the pruned tokens with the choice made here
(``VisionRun.choices``), exactly as for a choice made after the tower.

How a tower's rows map to tokens is the adapter's ``tower_plan`` (``runtime.tower_plan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlmzip.adapter import Adapter, VisionRun
from vlmzip.errors import UnsupportedModelError
from vlmzip.runtime.tower_plan import TowerPlan
from vlmzip.stages import VisionMethod, VisualItem


class TowerCut:
    """The in-tower choice of one session: hooks on the tower, and the tokens each encoded item keeps."""

    def __init__(
        self, adapter: Adapter, method: VisionMethod, runs: Callable[[], list[VisionRun]], flush: Callable[[], None]
    ) -> None:
        self.adapter, self.method = adapter, method
        self._runs, self._flush = runs, flush
        self._plan: TowerPlan | None = None  # the current forward's, while it runs on kept rows
        self._pixels: torch.Tensor | None = None

    def install(self) -> list[Any]:
        layers = self.adapter.tower_layers()
        at = self.method.tower_layer
        handles = [layers[at].register_forward_pre_hook(self._before_cut, with_kwargs=True)]
        handles += [layer.register_forward_pre_hook(self._later_layer, with_kwargs=True) for layer in layers[at + 1 :]]
        handles += [module.register_forward_hook(self._after_output) for module in self.adapter.tower_outputs()]
        handles.append(self.adapter.vision_tower.register_forward_pre_hook(self._before_tower, with_kwargs=True))
        return handles

    def _before_tower(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._plan = None  # outputs of layers before this forward's cut stay as they are
        if "pixels" in self.method.needs:
            self._pixels = args[0] if args else kwargs.get("pixel_values", kwargs.get("hidden_states"))

    def _before_cut(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._plan = None
        hidden = args[0] if args else kwargs["hidden_states"]
        self._flush()  # the attention of the layers before this one, for the method's signals
        run = self._runs()[-1]
        plan = self.adapter.tower_plan(hidden, run)
        items = self._items(plan, hidden, run)
        selections = self.method.select_batch(items)
        if any(selection.merged for selection in selections):
            raise UnsupportedModelError(
                f"{self.method.name}: merges tokens, which a choice inside the tower cannot do; drop at_layer"
            )
        run.choices = [selection.keep for selection in selections]
        if all(len(keep) == item.num_tokens for keep, item in zip(run.choices, items)):
            return None
        cut = plan.cut(hidden, [keep.to(hidden.device) for keep in run.choices])
        self._plan = plan
        args, kwargs = ((cut, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": cut})
        return args, plan.layer_kwargs(kwargs)

    def _items(self, plan: TowerPlan, hidden: torch.Tensor, run: VisionRun) -> list[VisualItem]:
        """The forward's items as the method sees them inside the tower (``kind_index``: the item's row in it)."""
        items = [
            VisualItem(-1, i, plan.kind, torch.arange(t * h * w), (t, h, w), kind_index=i)
            for i, (t, h, w) in enumerate(plan.grids)
        ]
        for item, features in zip(items, plan.tokens(hidden)):
            item.features = features
        if "vision_attention" in self.method.needs:
            self.adapter.vision_scores([run], items)
        if "pixels" in self.method.needs:
            for item, pixels in zip(items, plan.pixels(self._pixels)):
                item.signals["pixels"] = pixels
        return items

    def _later_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return None if self._plan is None else (args, self._plan.layer_kwargs(kwargs))

    def _after_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return None if self._plan is None else self._plan.full_length(output)
