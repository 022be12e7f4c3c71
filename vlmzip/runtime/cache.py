"""A KV cache whose layers can drop entries, keeping the logical length apart from what is stored.

``get_seq_length()`` (what ``generate`` and the models use to place new tokens) is the number of positions
seen; each layer stores its own entries with a per-sample ``valid`` mask (left padding created when samples
keep different numbers of entries) and a ``visual`` mask (which entries came from visual tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, get_layer_types_and_kwargs

from vlmzip.errors import UnsupportedModelError
from vlmzip.stages import DenseKV, KVStore


@dataclass
class RowMeta:
    """Per-row facts about the tokens a forward pass feeds a layer, ``[B, q]`` each: valid and visual (bool), and
    position (long): the row's index in the padded prompt, or prompt length + step for generated tokens."""

    valid: torch.Tensor
    visual: torch.Tensor
    position: torch.Tensor | None = None  # None: right after the stored entries


class RowFacts:
    """Appends and trims the ``[B, S]`` row facts of a cache's layers, sharing results between layers.

    Layers fed the same rows end up holding the *same* tensor objects, so the runtime builds one decode
    mask per distinct history instead of one per layer. Results are memoised by input identity for one
    forward pass (``clear`` at each pass; the memo holds its inputs so their ids are not reused).
    """

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self._memo.clear()

    def append(self, old: torch.Tensor, new: torch.Tensor, keep_last: int | None) -> torch.Tensor:
        key = (id(old), id(new), keep_last)
        hit = self._memo.get(key)
        if hit is None:
            joined = torch.cat([old, new.to(old.device)], dim=-1) if old.shape[-1] else new.to(old.device)
            hit = self._memo[key] = (old, new, joined if keep_last is None else joined[:, -keep_last:])
        return hit[2]


class CompressedLayer(DynamicLayer):
    """One layer's entries: a ``KVStore`` of keys and values ``[B, H, S, d]`` (``DenseKV`` until a decode method
    stores another form) plus ``valid``, ``visual`` and ``positions`` ``[B, S]``.

    With ``sliding_window`` set it keeps only the last ``sliding_window - 1`` entries after each update, like
    transformers' ``DynamicSlidingWindowLayer``. That is a superset of what the window lets later queries see:
    the window is measured in ``positions`` (as in the prefill mask), valid entries follow any padding and their
    positions strictly increase, so every entry within the window is among the last ``sliding_window - 1``.
    """

    def __init__(
        self, sliding_window: int | None = None, facts: RowFacts | None = None, read_packed: bool = False
    ) -> None:
        # CacheLayerMixin.__init__ would assign keys/values, which here are read from the store
        self.is_initialized = False
        self.sliding_window = sliding_window
        self.facts = facts if facts is not None else RowFacts()
        # whether the session's attention function reads stores that can ``attend`` (decode stage): then ``update``
        # hands the model the step's own keys and values, and that function reads the store packed
        self.read_packed = read_packed
        self.packed_step = False
        self.store: KVStore | None = None
        self.valid: torch.Tensor | None = None
        self.visual: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.incoming: RowMeta | None = None  # set by the runtime before each update

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self.store is None else self.store.read()[0]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.store is None else self.store.read()[1]

    @property
    def is_sliding(self) -> bool:  # read by Cache.is_sliding
        return self.sliding_window is not None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, dim = key_states.shape
        self.store = DenseKV(key_states.new_empty(batch, heads, 0, dim), value_states.new_empty(batch, heads, 0, dim))
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=key_states.device)
        self.visual = torch.zeros_like(self.valid)
        self.positions = torch.zeros(batch, 0, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        meta, self.incoming = self.incoming, None
        if meta is None:
            rows = (key_states.shape[0], key_states.shape[2])
            meta = RowMeta(self.valid.new_ones(rows), self.valid.new_zeros(rows))
        new_positions = meta.position if meta.position is not None else self.next_positions(key_states.shape[2])
        full = self.store.append(key_states, value_states)
        keep_last = self.sliding_window - 1 if self.is_sliding else None
        self.store = full if keep_last is None else full.keep_last(keep_last)
        self.valid = self.facts.append(self.valid, meta.valid, keep_last)
        self.visual = self.facts.append(self.visual, meta.visual, keep_last)
        self.positions = self.facts.append(self.positions, new_positions, keep_last)
        self.packed_step = self.read_packed and hasattr(full, "attend")
        if self.packed_step:  # placeholders: the attention reads the store (runtime.decode.DecodeStage.attend)
            return key_states, value_states
        return full.read()

    def next_positions(self, count: int) -> torch.Tensor:
        """``[B, count]`` positions of ``count`` rows that directly follow the stored entries."""
        steps = torch.arange(count, device=self.positions.device)
        if not self.positions.shape[1]:
            return steps.expand(len(self.positions), -1)
        return self.positions[:, -1:] + 1 + steps

    def get_seq_length(self) -> int:
        """Stored entries (including padding); the cache reports the logical length to the model."""
        return 0 if not self.is_initialized else self.valid.shape[1]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.sliding_window if self.is_sliding else -1

    def keep_entries(self, index: torch.Tensor, valid: torch.Tensor, store: KVStore | None = None) -> None:
        """Keep stored entries ``index [B, S']`` (per sample); ``valid [B, S']`` marks real ones; ``store``, if
        given, holds them in another form (merged or quantized), else they are gathered from the current one."""
        self.store = store if store is not None else self.store.gather(index)
        self.visual = self.visual.gather(1, index) & valid
        self.positions = self.positions.gather(1, index)
        self.valid = valid

    def crop(self, tokens_to_remove: int) -> None:
        raise UnsupportedModelError(
            "a vlmzip cache cannot be cropped (assisted or speculative decoding); restore the model first"
        )

    def reset(self) -> None:
        self.is_initialized = False
        self.store = self.valid = self.visual = self.positions = self.incoming = None
        self.packed_step = False

    def offload(self) -> None:
        raise UnsupportedModelError("a vlmzip cache cannot be offloaded; restore the model first")

    def prefetch(self) -> None:
        raise UnsupportedModelError("a vlmzip cache cannot be offloaded; restore the model first")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            index = torch.arange(self.valid.shape[0], device=self.valid.device)[indices]
            self._select_batch(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.store = self.store.repeat_batch(repeats)
            self.valid = self.valid.repeat_interleave(repeats, dim=0)
            self.visual = self.visual.repeat_interleave(repeats, dim=0)
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def _select_batch(self, index: torch.Tensor) -> None:
        self.store = self.store.select_batch(index)
        index = index.to(self.valid.device)
        self.valid = self.valid.index_select(0, index)
        self.visual = self.visual.index_select(0, index)
        self.positions = self.positions.index_select(0, index)

    def nbytes(self) -> int:
        return 0 if not self.is_initialized else self.store.nbytes


def store_byte_parts(store: KVStore | None) -> dict[str, int]:
    """A layer's ``nbytes`` by kind: ``payload``, ``scales``, ``zeros`` of packed entries and ``full`` precision ones
    (a store without ``byte_parts`` reports its bytes as ``other``; no store: nothing)."""
    if store is None:
        return {}
    parts = getattr(store, "byte_parts", None)
    return parts() if parts is not None else {"other": store.nbytes}


class CompressedCache(DynamicCache):
    """A ``DynamicCache`` of ``CompressedLayer``s for one request; ``logical_length`` counts positions seen;
    ``read_packed``: the session's attention function reads quantized stores packed during decode steps."""

    def __init__(self, config, read_packed: bool = False) -> None:
        layer_types, layer_kwargs = get_layer_types_and_kwargs(config)
        self.facts = RowFacts()
        layers = []
        for layer_type, kwargs in zip(layer_types, layer_kwargs):
            if layer_type == "full_attention":
                layers.append(CompressedLayer(facts=self.facts, read_packed=read_packed))
            elif layer_type == "sliding_attention":
                layers.append(CompressedLayer(sliding_window=kwargs["sliding_window"], facts=self.facts))
            else:
                raise UnsupportedModelError(f"vlmzip's cache does not support {layer_type!r} layers yet")
        Cache.__init__(self, layers=layers)
        self.logical_length = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.logical_length

    @property
    def is_croppable(self) -> bool:
        return False

    def entries(self) -> list[list[int]]:
        """Valid stored entries per layer, per sample."""
        return [layer.valid.sum(dim=1).tolist() if layer.valid is not None else [] for layer in self.layers]

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
