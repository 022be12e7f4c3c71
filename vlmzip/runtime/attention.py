"""Attention functions on one model instance, and the attention a chosen set of query rows pays.

vlmzip never switches a model to ``eager``: where a method needs attention scores (or replaces attention), it
registers a function that wraps the model's own backend under a name unique to the session
(``AttentionInterface`` **and** ``AttentionMaskInterface``: without the mask function the model would build no
mask) and points that sub-config at it; ``remove`` puts every backend back and unregisters the names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from vlmzip.kernels.chunk_attention import ChunkPlan, chunk_attention, chunk_plan
from vlmzip.scoring import attention_probs
from vlmzip.selection import gather_rows
from vlmzip.stages import AttentionFunction, QueryAttention


class AttentionFunctions:
    """The attention functions one session registered on one model, and the backends they replaced."""

    def __init__(self, model: nn.Module, prefix: str) -> None:
        self.model, self.prefix = model, prefix
        self._saved: dict[str, str] = {}
        self._names: list[str] = []
        self._eager: dict[type, AttentionFunction] = {}

    def use(self, config_key: str, backend: str, function: AttentionFunction, packed: bool = False) -> None:
        """Run ``function`` in place of ``backend`` for the sub-config ``config_key`` of the model; ``packed``: the
        function takes the whole ``cu_seqlens``-packed sequence in one call (``PackedChunks``), as flash does."""
        # the name keeps "flash" when the backend has it, and gets it when the function is packed: transformers
        # branches on that substring (Qwen's vision attention then passes cu_seqlens in one call, not chunk by chunk)
        name = f"{self.prefix}_{config_key.split('_')[0]}_{backend}"
        if packed and "flash" not in name:
            name += "_packed_flash"
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[backend])
        self._names.append(name)
        self._saved[config_key] = backend
        self.model.set_attn_implementation({config_key: name})

    def remove(self) -> None:
        if self._saved:
            self.model.set_attn_implementation(dict(self._saved))
        for name in self._names:
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)
        self._saved.clear()
        self._names.clear()

    def base(self, backend: str, module: nn.Module) -> AttentionFunction:
        """The function ``backend`` runs for ``module`` (each model file defines its own eager attention)."""
        if backend != "eager":
            return ALL_ATTENTION_FUNCTIONS[backend]
        kind = type(module)
        if kind not in self._eager:
            self._eager[kind] = inspect.getmodule(kind).eager_attention_forward
        return self._eager[kind]


class PackedChunks:
    """A flash-style attention function over a backend that is not: it takes the whole packed sequence
    ``[1, H, S, D]`` with ``cu_seq_lens_q`` (what Qwen's vision attention passes to a "flash" implementation) and
    runs the chunks through ``base(module)`` in a few batched calls (``vlmzip.kernels.chunk_attention``) instead of
    the one call per chunk the model makes for ``sdpa``/``eager``. Chunk plans are memoised by the identity of the
    ``cu_seqlens`` tensor: the tower hands the same one to every layer of a kind (windowed, full), so a forward
    reads the lengths at most once per kind."""

    def __init__(self, base: Callable[[nn.Module], AttentionFunction], contiguous: bool = False) -> None:
        self.base, self.contiguous = base, contiguous  # contiguous chunks for eager (``chunk_attention``)
        self._plans: dict[int, tuple[torch.Tensor, ChunkPlan]] = {}

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        base = self.base(module)
        bounds = kwargs.pop("cu_seq_lens_q", None)
        longest = kwargs.pop("max_length_q", None)
        kwargs.pop("cu_seq_lens_k", None)
        kwargs.pop("max_length_k", None)
        if bounds is None:  # not a packed call
            return base(module, query, key, value, attention_mask, **kwargs)

        def attend(q, k, v, mask):
            return base(module, q, k, v, mask, **kwargs)[0]

        plan = self._plan(bounds, query.shape[2], longest, query.device)
        return chunk_attention(query, key, value, plan, attend, contiguous=self.contiguous), None

    def _plan(self, bounds: torch.Tensor, total: int, longest: int | None, device: torch.device) -> ChunkPlan:
        held = self._plans.get(id(bounds))
        if held is not None and held[0] is bounds:
            return held[1]
        if len(self._plans) >= 8:  # the previous forwards' tensors (the memo holds them, so ids stay unique)
            self._plans.clear()
        plan = chunk_plan(bounds, total, longest, device)
        self._plans[id(bounds)] = (bounds, plan)
        return plan


def scaling(module: nn.Module, query: torch.Tensor, kwargs: dict[str, Any]) -> float:
    """The softmax scale the attention call uses."""
    return kwargs.get("scaling", getattr(module, "scaling", query.shape[-1] ** -0.5))


def query_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: Any,
    rows: torch.Tensor,
    valid: torch.Tensor,
    kwargs: dict[str, Any],
) -> QueryAttention:
    """Head-averaged attention of query rows ``rows [B, Q]`` (``valid [B, Q]``) over every key of a prompt-pass
    attention call, under the mask the call itself got (the prompt pass starts from an empty cache, so a row's
    index is its key's index)."""
    masks = _query_masks(attention_mask, rows, getattr(module, "sliding_window", None))
    probs = attention_probs(
        gather_rows(query, rows, dim=2), key, scaling(module, query, kwargs), softcap=kwargs.get("softcap"), **masks
    )
    return QueryAttention(probs * valid.to(probs.device)[..., None], rows, valid)


def _query_masks(mask: Any, rows: torch.Tensor, window: int | None) -> dict[str, Any]:
    """The mask of query rows ``rows [B, Q]`` as ``attention_probs`` arguments: the rows of a 4D mask, or, for a
    ``None`` (plain causal) or 2D (flash attention's padding) mask, the causal, windowed and padded mask it
    stands for as positions, window and key padding (no ``[Q, K]`` tensor built)."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        return {"mask": gather_rows(mask, rows.to(mask.device), dim=2)}
    masks: dict[str, Any] = {"query_positions": rows, "window": window}
    if isinstance(mask, torch.Tensor):  # [B, K] padding
        masks["key_valid"] = mask.bool().to(rows.device)
    return masks
