"""How a vision tower's rows map to language-model tokens, and how its layers run on the rows of some tokens: the
adapter's ``tower_plan`` for a choice inside the tower (``runtime.tower``).

``StackedPlan``: towers whose layers take ``[images, rows, D]`` (CLIP, SigLIP; every image of a forward keeps the same
count). ``PackedPlan``: towers that pack their items into one ``[rows, D]`` sequence split by ``cu_seqlens`` (Qwen-VL;
any count per item; the later layers get the chunk bounds and rotary embeddings of the kept rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlmzip.errors import UnsupportedModelError
from vlmzip.selection import gather_rows


class TowerPlan:
    """How one tower forward's hidden states map to its items' language-model tokens, and how its later layers run
    on the rows of some of them. ``grids``: each item's ``(frames, rows, cols)`` in tokens; ``kind``: what the
    tower can tell of them (``"video"`` when an item has several temporal steps)."""

    grids: list[tuple[int, int, int]]
    kind: str = "image"

    def tokens(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states pooled to each item's tokens, ``[n, D]`` per item."""
        raise NotImplementedError

    def pixels(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The tower's input cut into each item's tokens: ``[n, U, P]`` per item (``U`` patches of ``P`` values)."""
        raise UnsupportedModelError(
            "this family's vision tower does not give each token's pixels, so a method that reads them (evs) cannot "
            "run on it; for frames given as images use a method that chooses after the tower (fastvid)"
        )

    def cut(self, hidden: torch.Tensor, keep: list[torch.Tensor]) -> torch.Tensor:
        """The rows of the kept tokens ``keep`` (ascending, per item) for the layers from the cut on."""
        raise NotImplementedError

    def layer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A later layer's keyword arguments for the cut rows (chunk bounds, rotary embeddings); default: as given."""
        return kwargs

    def full_length(self, output: Any) -> Any:
        """An output module's result at full length, zeros in the pruned rows (``None``: leave it as it is)."""
        raise NotImplementedError


class StackedPlan(TowerPlan):
    """A tower whose layers take ``[images, rows, D]`` (CLIP, SigLIP); ``tokens`` pools rows to ``[images, n, D]``
    tokens and ``rows`` maps kept tokens ``[images, k]`` to the rows they need (the adapter's ``tower_tokens`` and
    ``tower_rows``). Its output module is the tower, whose hidden-state outputs return to full length."""

    def __init__(
        self,
        grid: tuple[int, int, int],
        count: int,
        tokens: Callable[[torch.Tensor], torch.Tensor],
        rows: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.grids = [grid] * count
        self._tokens, self._rows = tokens, rows
        self._kept_rows: torch.Tensor | None = None
        self._length = 0

    def tokens(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return list(self._tokens(hidden))

    def cut(self, hidden: torch.Tensor, keep: list[torch.Tensor]) -> torch.Tensor:
        if len({len(k) for k in keep}) > 1:
            raise UnsupportedModelError(
                f"kept {sorted({len(k) for k in keep})} tokens in images of one tower batch; inside this tower every "
                "image must keep the same count (drop at_layer)"
            )
        self._kept_rows = self._rows(torch.stack(keep))
        self._length = hidden.shape[1]
        return gather_rows(hidden, self._kept_rows, dim=1)

    def full_length(self, output: Any) -> Any:
        for name in ("last_hidden_state", "hidden_states"):
            value = getattr(output, name, None)
            if isinstance(value, torch.Tensor):
                setattr(output, name, self._scatter(value))
            elif isinstance(value, tuple):
                setattr(output, name, tuple(self._scatter(v) for v in value))
        return output

    def _scatter(self, value: Any) -> Any:
        """A ``[images, kept rows, D]`` output at full length (other outputs, from before the cut, as they are)."""
        rows = self._kept_rows
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[1] != rows.shape[1]:
            return value
        full = value.new_zeros(value.shape[0], self._length, value.shape[2])
        return full.scatter(1, rows[..., None].expand_as(value), value)


class PackedPlan(TowerPlan):
    """A tower that packs its items' patches into one sequence ``[rows, D]`` (Qwen-VL): a token is ``unit``
    consecutive rows; ``order`` lists the token each unit of the layers' sequence is, where the layers see the units
    permuted (Qwen2.5-VL's windows). The layers' ``cu_seqlens`` (per frame or per window) become the bounds of the
    kept rows, empty chunks dropped; ``position_embeddings`` keep the kept rows' rotary angles, so a kept patch sits
    where it sat. Output modules (the patch mergers) return one row per kept token, scattered to every token."""

    def __init__(self, grids: list[tuple[int, int, int]], unit: int, order: torch.Tensor | None = None) -> None:
        self.grids = grids
        self.kind = "video" if any(t > 1 for t, _, _ in grids) else "image"
        self.sizes = [t * h * w for t, h, w in grids]
        self.unit = unit
        self.place = None if order is None else order.argsort()  # token -> its unit's place in the layers' order
        self._units: torch.Tensor | None = None  # places of the kept tokens' units, ascending
        self._rows: torch.Tensor | None = None
        self._memo: dict[int, tuple[Any, Any]] = {}  # id(original) -> (original, cut): the tower reuses its tensors

    def tokens(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        units = hidden.view(-1, self.unit, hidden.shape[-1]).float().mean(dim=1)
        if self.place is not None:
            units = units[self.place.to(units.device)]
        return list(units.split(self.sizes))

    def pixels(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        # the tower's input is in token order (the permutation into windows happens inside it)
        return list(pixels.reshape(-1, self.unit, pixels.shape[-1]).split(self.sizes))

    def cut(self, hidden: torch.Tensor, keep: list[torch.Tensor]) -> torch.Tensor:
        starts = torch.tensor([0, *self.sizes[:-1]], device=hidden.device).cumsum(dim=0)
        tokens = torch.cat([k + start for k, start in zip(keep, starts)])
        units = tokens if self.place is None else self.place.to(hidden.device)[tokens]
        self._units = units.sort().values
        self._rows = (self._units[:, None] * self.unit + torch.arange(self.unit, device=hidden.device)).flatten()
        self._memo.clear()
        return hidden.index_select(0, self._rows)

    def layer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        if kwargs.get("cu_seqlens") is not None:
            bounds, longest = self._cached(kwargs["cu_seqlens"], self._bounds)
            kwargs["cu_seqlens"] = bounds
            held = kwargs.get("max_seqlen")
            if held is not None:
                kwargs["max_seqlen"] = longest if isinstance(held, torch.Tensor) else int(longest)
        if kwargs.get("position_embeddings") is not None:
            kwargs["position_embeddings"] = self._cached(
                kwargs["position_embeddings"], lambda pair: tuple(t.index_select(0, self._rows) for t in pair)
            )
        return kwargs

    def _cached(self, original: Any, make: Callable[[Any], Any]) -> Any:
        held = self._memo.get(id(original))
        if held is None or held[0] is not original:
            held = self._memo[id(original)] = (original, make(original))
        return held[1]

    def _bounds(self, bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk bounds over the kept rows (rows below each bound), without empty chunks, and the longest chunk."""
        rows = self._rows.to(bounds.device)
        cut = torch.searchsorted(rows, bounds.to(rows.dtype)).to(bounds.dtype).unique_consecutive()
        return cut, cut.diff().max()

    def full_length(self, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.shape[0] != len(self._units):
            return None  # an output of the rows before the cut (a DeepStack merger at an earlier layer)
        full = output.new_zeros(sum(self.sizes), *output.shape[1:])
        return full.index_copy(0, self._units.to(output.device), output)
