"""The decode-stage contract: decide what the KV cache that generation reads stores.

After the prompt pass (and after any later step the method marks ``due``), the runtime hands the method each
full-attention layer's stored entries (``LayerEntries``: keys, values, per-entry facts and the attention
statistics the method asked for) and stores what it returns (``StoredEntries``): a subset of the entries, and
optionally the form they are kept in (merged keys and values, or a quantized store). The cache keeps the
logical length (positions seen) apart from the stored entries and counts the bytes its stores occupy.
Sliding-window layers are left alone.

Every decode method can store what it keeps quantized: its stage options ``bits`` (16: the model's dtype, the
default; 2, 4 or 8), ``group_size`` and ``residual`` make ``encode`` hold the kept entries in a ``QuantizedKV``
(KIVI's layout, ``vlmzip.stages.quantized``), so eviction and quantization compose (``knorm:keep=0.5,bits=2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.selection import gather_rows, pack_left, top_k_mask
from vlmzip.stages.method import Method, ModelInfo, Stage, stage_option
from vlmzip.stages.prefill import PromptRows
from vlmzip.stages.quantized import FULL_BITS, Quantization, QuantizedKV, check_against_model, check_quantization


class KVStore(Protocol):
    """How a cache layer holds its keys and values ``[B, H, S, d]`` (dense, merged or quantized).

    Stores are values: every operation returns a new store. ``read`` gives the keys and values attention uses;
    ``append`` adds a forward's new entries; ``gather`` keeps entries ``index [B, S']`` per sample;
    ``select_batch`` / ``repeat_batch`` follow ``generate``'s beam reordering and sample repetition;
    ``keep_last`` keeps a sliding window's last entries; ``nbytes`` is what the store occupies.
    ``DenseKV`` is the plain one, ``QuantizedKV`` the quantized one. Optional: ``byte_parts()`` (``nbytes`` by kind,
    for ``stats``) and ``attend(query, scaling, valid)`` (a decode step's attention read from the store as it is,
    ``None`` to let the model's attention read ``read()``; used when the decode method ``quantizes``).
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
        return DenseKV(gather_rows(self.keys, index, 2), gather_rows(self.values, index, 2))

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

    def byte_parts(self) -> dict[str, int]:
        return {"full": self.nbytes}


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
    ``store`` is the form the layer holds them in now (``keys``/``values`` are its ``read()``).
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
    store: KVStore | None = None

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
    keeps the original keys and values at ``index``. ``valid [B, S']``, when given, marks the real entries instead
    of ``counts`` (for an order with padding anywhere: ZipVL's mixed-precision parts). ``index=None`` keeps every
    entry in place and only changes the form they are stored in (``store``)."""

    index: torch.Tensor | None
    counts: list[int]
    store: KVStore | None = None
    valid: torch.Tensor | None = None


@dataclass(frozen=True)
class DecodeMethod(Method):
    """Evicts, merges or re-encodes the KV cache's entries before generation reads them.

    By default, per full-attention layer and per sample, keeps the ``keep`` highest-``score`` visual entries
    (a fraction of the sample's visual entries, or a count) and every text entry; all heads of a layer keep
    the same entries, so masks stay ``[B, 1, q, kv]``. Steps to override: ``score`` (most methods), ``budget``,
    ``select`` (any other choice of entries), ``compress`` (merging), ``encode`` (the form kept entries are stored
    in), ``query_rows`` (attention statistics from the prompt pass) and ``due`` (re-compress during generation).

    Stage options (omitted from policy strings at their defaults): ``bits`` (16: the model's dtype; 2, 4 or 8: the
    kept entries are stored quantized, keys per channel in groups of ``group_size`` tokens, values per token, the
    last ``residual`` entries in full precision: KIVI's layout).
    """

    stage: ClassVar[Stage] = "decode"
    keep: Keep = 0.5
    bits: int = stage_option(FULL_BITS)
    group_size: int = stage_option(32)
    residual: int = stage_option(128)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_quantization(self.name, self.bits, self.group_size, self.residual)

    @property
    def quantizes(self) -> bool:
        """Whether the stores are quantized (``bits`` < 16): decode steps then read them packed (``attend``)."""
        return self.bits < FULL_BITS

    @property
    def quantization(self) -> Quantization:
        return Quantization(self.bits, self.group_size, self.residual)

    def check_model(self, info: ModelInfo) -> None:
        """Value groups must divide the head dimension and the window fit the context (override: call super)."""
        if self.quantizes:
            check_against_model(self.name, self.quantization, info.head_dim, info.context)

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

    def encode(self, entries: LayerEntries, stored: StoredEntries | None) -> StoredEntries | None:
        """The form the entries ``compress`` kept (``stored``; ``None``: all of them) are stored in. By default as
        they are (``bits`` = 16), or else in KIVI's ``QuantizedKV``; a layer already quantized and not cut again is
        left alone."""
        if not self.quantizes or (stored is None and isinstance(entries.store, QuantizedKV)):
            return stored
        if stored is None:  # nothing evicted: every entry, in place
            store = QuantizedKV.build(entries.keys, entries.values, self.quantization, entries.valid)
            return StoredEntries(None, entries.count, store)
        valid = stored.valid
        if valid is None:  # padding first, as the runtime lays it out
            columns = torch.arange(stored.index.shape[1], device=stored.index.device)
            valid = columns >= stored.index.shape[1] - torch.tensor(stored.counts, device=columns.device)[:, None]
        if stored.store is not None:
            keys, values = stored.store.read()
        else:
            keys, values = (gather_rows(tensor, stored.index, 2) for tensor in (entries.keys, entries.values))
        store = QuantizedKV.build(keys, values, self.quantization, valid)
        return StoredEntries(stored.index, stored.counts, store, stored.valid)
