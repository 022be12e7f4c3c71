"""The decode-stage contract: decide what the KV cache that generation reads stores.

After the prompt pass (and after any later step the method marks ``due``), the runtime hands the method each
full-attention layer's stored entries (``LayerEntries``: keys, values, per-entry facts and the attention
statistics the method asked for) and stores what it returns (``StoredEntries``): a subset of the entries, and
optionally the form they are kept in (merged keys and values, or a quantized store). The cache keeps the
logical length (positions seen) apart from the stored entries and counts the bytes its stores occupy.
Sliding-window layers are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.selection import pack_left, top_k_mask
from vlmzip.stages.method import Method, Stage
from vlmzip.stages.prefill import PromptRows


class KVStore(Protocol):
    """How a cache layer holds its keys and values ``[B, H, S, d]`` (dense, merged or quantized).

    Stores are values: every operation returns a new store. ``read`` gives the keys and values attention uses;
    ``append`` adds a forward's new entries; ``gather`` keeps entries ``index [B, S']`` per sample;
    ``select_batch`` / ``repeat_batch`` follow ``generate``'s beam reordering and sample repetition;
    ``keep_last`` keeps a sliding window's last entries; ``nbytes`` is what the store occupies.
    ``DenseKV`` is the plain one.
    """

    def read(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> KVStore: ...

    def gather(self, index: torch.Tensor) -> KVStore: ...

    def select_batch(self, index: torch.Tensor) -> KVStore: ...

    def repeat_batch(self, repeats: int) -> KVStore: ...

    def keep_last(self, count: int) -> KVStore: ...

    @property
    def nbytes(self) -> int: ...


class DenseKV:
    """Keys and values ``[B, H, S, d]`` stored as they are: the cache's default ``KVStore``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys, self.values

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> DenseKV:
        if not self.keys.shape[-2]:  # the prompt pass: no copy of the first entries
            return DenseKV(keys, values)
        return DenseKV(torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2))

    def gather(self, index: torch.Tensor) -> DenseKV:
        return DenseKV(_gather_kv(self.keys, index), _gather_kv(self.values, index))

    def select_batch(self, index: torch.Tensor) -> DenseKV:
        index = index.to(self.keys.device)
        return DenseKV(self.keys.index_select(0, index), self.values.index_select(0, index))

    def repeat_batch(self, repeats: int) -> DenseKV:
        return DenseKV(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def keep_last(self, count: int) -> DenseKV:
        return DenseKV(self.keys[..., -count:, :], self.values[..., -count:, :])

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@dataclass
class LayerEntries:
    """One cache layer's stored entries, as a decode method sees them.

    ``keys``/``values`` ``[B, H, S, d]`` (read from the store); ``valid``, ``visual`` and ``positions`` ``[B, S]``
    (real entry vs padding, from a visual token, position in the sequence); ``visual_count`` / ``count`` the
    valid visual / all entries per sample (host); ``attention [B, S]`` the mean attention the method's
    ``query_rows`` put on each entry in the prompt pass (``None`` unless asked for); ``step`` is 0 after the
    prompt pass, then the decode steps done. ``prompt_final [B, P]`` marks the prompt's columns (``input_ids``,
    ``P`` its padded length) whose rows the prompt pass's last layer still held: every text row and the visual rows
    that survived every prefill cut (the prefill stage's final kept set); ``survived`` maps it onto the entries.
    """

    layer: int
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor
    positions: torch.Tensor
    visual_count: list[int]
    count: list[int]
    step: int = 0
    attention: torch.Tensor | None = None
    prompt_final: torch.Tensor | None = None

    @property
    def survived(self) -> torch.Tensor:
        """``[B, S]``: valid entries whose row the prompt pass's last layer held, i.e. that no prefill cut dropped
        (entries of generated tokens, past the prompt, count as survived; without ``prompt_final``, every one)."""
        if self.prompt_final is None:
            return self.valid
        final = self.prompt_final.to(self.positions.device)
        in_prompt = self.positions < final.shape[1]
        held = final.gather(1, self.positions.clamp(max=final.shape[1] - 1))
        return self.valid & (held | ~in_prompt)


@dataclass
class StoredEntries:
    """What a layer stores after a decode method ran: entries ``index [B, S']`` (per sample, packed to the
    right end as ``selection.pack_left`` packs them; each sample's first ``S' - counts[b]`` are padding) and,
    when given, the ``store`` holding them (merged or quantized keys and values, ``S'`` entries); ``None``
    keeps the original keys and values at ``index``."""

    index: torch.Tensor
    counts: list[int]
    store: KVStore | None = None


@dataclass(frozen=True)
class DecodeMethod(Method):
    """Evicts, merges or re-encodes the KV cache's entries before generation reads them.

    By default, per full-attention layer and per sample, keeps the ``keep`` highest-``score`` visual entries
    (a fraction of the sample's visual entries, or a count) and every text entry; all heads of a layer keep
    the same entries, so masks stay ``[B, 1, q, kv]``. Steps to override: ``score`` (most methods), ``budget``,
    ``select`` (any other choice of entries), ``compress`` (merging, quantizing), ``query_rows`` (attention
    statistics from the prompt pass) and ``due`` (re-compress during generation).
    """

    stage: ClassVar[Stage] = "decode"
    keep: Keep = 0.5

    def query_rows(self, rows: PromptRows) -> torch.Tensor | None:
        """Prompt rows whose attention over each layer's entries ``LayerEntries.attention`` should hold
        (``None``: the method reads no attention, and none is captured)."""
        return None

    def due(self, step: int) -> bool:
        """Whether to run after forward ``step`` (0: the prompt pass; n: the n-th decode step)."""
        return step == 0

    def score(self, entries: LayerEntries) -> torch.Tensor:
        """Importance of each stored entry, ``[B, S]``: higher is kept first."""
        raise NotImplementedError(f"{type(self).__name__} must override score() or compress()")

    def budget(self, entries: LayerEntries) -> list[int]:
        """Visual entries each sample keeps."""
        return [kept_count(self.keep, n) for n in entries.visual_count]

    def select(self, entries: LayerEntries) -> tuple[torch.Tensor, list[int]] | None:
        """The entries the layer keeps, ``[B, S]`` bool, and how many per sample (on the host); ``None`` keeps them
        all. By default every text entry and the ``budget`` visual entries of highest ``score``."""
        counts = self.budget(entries)
        if counts == entries.visual_count:
            return None
        candidates = entries.visual & entries.valid
        chosen = top_k_mask(self.score(entries), candidates, torch.tensor(counts, device=entries.keys.device))
        stored = [total - before + after for total, before, after in zip(entries.count, entries.visual_count, counts)]
        return (entries.valid & ~entries.visual) | chosen, stored

    def compress(self, entries: LayerEntries) -> StoredEntries | None:
        """What the layer stores (``None``: leave it as it is): by default the ``select``-ed entries, as they are."""
        selected = self.select(entries)
        if selected is None:
            return None
        keep, stored = selected
        index, _ = pack_left(keep, max(stored))
        return StoredEntries(index, stored)


def _gather_kv(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select entries ``index [B, S']`` from ``[B, H, S, d]`` for every head."""
    expanded = index[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3]).to(tensor.device)
    return tensor.gather(2, expanded)
