"""The stage contracts a compression method implements: derive from one base class, override its steps.

``VisionMethod`` (before the language model), ``PrefillMethod`` (inside the prompt pass) and ``DecodeMethod``
(the KV cache generation reads); each module documents what the runtime hands a method and what it expects
back. Methods import from here, never from ``vlmzip.runtime``.
"""

from vlmzip.stages.decode import DecodeMethod, DenseKV, KVStore, LayerEntries, StoredEntries
from vlmzip.stages.method import Method, ModelInfo, Stage
from vlmzip.stages.prefill import (
    AttentionFunction,
    ComposedPrefill,
    Cut,
    EquivalentSchedule,
    OneCutMethod,
    PrefillMethod,
    PromptLayer,
    PromptRows,
    QueryAttention,
    RowSelection,
    ScheduleCut,
    equivalent_budgets,
    scale_layers,
    validate_layers,
)
from vlmzip.stages.quantized import PackedPart, Quantization, QuantizedKV, mixed_store
from vlmzip.stages.sparse import SparseAttention
from vlmzip.stages.vision import (
    SIGNALS,
    VisionMethod,
    VisualItem,
    VisualSelection,
    by_size,
    greedy_by_size,
    unit_features,
)

__all__ = [
    "SIGNALS",
    "AttentionFunction",
    "ComposedPrefill",
    "Cut",
    "DecodeMethod",
    "DenseKV",
    "EquivalentSchedule",
    "KVStore",
    "LayerEntries",
    "Method",
    "ModelInfo",
    "OneCutMethod",
    "PackedPart",
    "PrefillMethod",
    "PromptLayer",
    "PromptRows",
    "Quantization",
    "QuantizedKV",
    "QueryAttention",
    "RowSelection",
    "ScheduleCut",
    "SparseAttention",
    "Stage",
    "StoredEntries",
    "VisionMethod",
    "VisualItem",
    "VisualSelection",
    "by_size",
    "greedy_by_size",
    "unit_features",
    "equivalent_budgets",
    "mixed_store",
    "scale_layers",
    "validate_layers",
]
