"""Carries out a policy on one model instance: hooks, attention functions and the per-request state.

``Session.install`` registers, on that model only:

* a forward pre-hook and hook on the model: start a request (find visual tokens, give ``generate`` a
  ``CompressedCache``), or continue one (decode step); after the prompt pass run the decode-stage method;
* a forward pre-hook on the language model: the vision-stage cut (``inputs_embeds``, masks, positions);
* a forward pre-hook on every decoder layer: the prefill-stage cut at its layer, the cut applied to the
  mask / rotary embeddings every later layer receives, row facts for the cache, and per-layer decode masks;
* attention functions (``AttentionInterface``) wrapping the model's own backend, registered under a name
  unique to this session, only where a method needs attention scores.

``remove`` undoes every one of these.
"""

from __future__ import annotations

import inspect
import itertools
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from vlmzip.adapter import Adapter, VisionRun
from vlmzip.budget import kept_count
from vlmzip.errors import InputError, UnsupportedModelError
from vlmzip.methods.base import VisualItem
from vlmzip.policy import Policy
from vlmzip.runtime.cache import CompressedCache, CompressedLayer, RowMeta
from vlmzip.runtime.masks import cut_mask, layer_mask
from vlmzip.scoring import attention_mass
from vlmzip.selection import gather_rows, pack_left, top_k_mask
from vlmzip.stats import Stats

_SESSION_IDS = itertools.count()
_SUPPORTED_BACKENDS = ("eager", "sdpa")


@dataclass
class Request:
    """State of one request: a plain forward, or a ``generate`` call (its prompt pass and decode steps)."""

    inputs: dict[str, Any]  # the model's forward arguments of the prompt pass
    prompt_valid: torch.Tensor  # [B, L] non-padding rows of the prompt
    cache_ref: Callable[[], CompressedCache | None]  # weak: the caller owns the cache and frees it
    items: list[VisualItem] = field(default_factory=list)
    visual: torch.Tensor | None = None  # [B, L] visual placeholder rows of the prompt
    phase: str = "prefill"
    step_length: int = 0
    # rows the hidden states hold now (prefill), [B, L_now]: validity, visual or not, prompt position, and
    # index into the language model's input rows (None until a prefill-stage cut)
    rows_valid: torch.Tensor | None = None
    rows_visual: torch.Tensor | None = None
    rows_prompt: torch.Tensor | None = None
    lm_index: torch.Tensor | None = None
    # per sample, on the host (so cuts need no device round trip): rows held now, visual rows among them
    rows_count: list[int] = field(default_factory=list)
    visual_count: list[int] = field(default_factory=list)
    visual_in: list[int] = field(default_factory=list)
    kept: dict[str, list[int]] = field(default_factory=dict)
    kept_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (prompt rows, kept)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    cut_inputs: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # id(original) -> (original, cut)
    step: RowMeta | None = None  # the rows a decode step feeds every layer
    step_masks: dict[tuple, tuple] = field(default_factory=dict)  # one mask per distinct cache-layer history
    # what the cache held after the last forward: (valid, visual) per layer, and bytes
    kv_rows: list[tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    kv_bytes: int = 0

    def set_rows(self, valid: torch.Tensor, prompt: torch.Tensor, lm_index: torch.Tensor | None) -> None:
        self.rows_valid, self.rows_prompt, self.lm_index = valid, prompt, lm_index
        self.rows_visual = self.visual.gather(1, prompt) & valid
        self.cut_inputs.clear()

    def record(self, stage: str, visual_count: list[int]) -> None:
        """Remember what the rows hold after ``stage``: ``visual_count`` visual tokens per sample (their
        prompt positions are read when stats are asked for)."""
        self.rows_count = [rows - old + new for rows, old, new in zip(self.rows_count, self.visual_count, visual_count)]
        self.visual_count = self.kept[stage] = list(visual_count)
        self.kept_rows[stage] = (self.rows_prompt, self.rows_visual & self.rows_valid)

    def kept_positions(self) -> dict[str, list[list[int]]]:
        return {
            stage: [row[mask].tolist() for row, mask in zip(prompt, kept)]
            for stage, (prompt, kept) in self.kept_rows.items()
        }


class Session:
    """One policy installed on one model instance."""

    def __init__(self, model: nn.Module, policy: Policy, adapter: Adapter) -> None:
        self.model, self.policy, self.adapter = model, policy, adapter
        self.text_config = adapter.text_config
        self.backend = self.text_config._attn_implementation
        if self.backend not in _SUPPORTED_BACKENDS and "flash" not in str(self.backend):
            raise UnsupportedModelError(
                f"attention backend {self.backend!r} is not supported by vlmzip; load the model with "
                "attn_implementation='sdpa', 'eager' or 'flash_attention_2'"
            )
        self.info = adapter.model_info()
        for method in policy.methods():
            method.check_model(self.info)
        self.vision_layers = policy.vision.vision_layers(self.info) if policy.vision else []
        self.name = f"vlmzip{next(_SESSION_IDS)}"
        self.request: Request | None = None
        # the vision-tower forwards behind the current images (generate encodes images before the prompt
        # pass, and once for all the passes of generate(use_cache=False)); replaced by the next encoding
        self.vision_runs: list[VisionRun] = []
        self._runs_used = False
        self.last_request: Request | None = None  # the last request that ran to the end of a forward
        self._handles: list[Any] = []
        self._saved_backends: dict[str, str] = {}
        self._registered: list[str] = []
        self._vision_layer_of: dict[int, int] = {}
        # vision attention calls of the current layer (one per chunk: frame or window) awaiting their mass
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, float, torch.Tensor | None]] = []
        self._eager: dict[type, Any] = {}

    # -- install / remove ---------------------------------------------------------------------------------
    def install(self) -> None:
        self._handles += [
            self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            self.model.register_forward_hook(self._after_forward, with_kwargs=True),
            self.adapter.language_model.register_forward_pre_hook(self._before_language_model, with_kwargs=True),
        ]
        for idx, layer in enumerate(self.adapter.decoder_layers):
            hook = self._layer_hook(idx)
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        if self.policy.prefill is not None:
            self._use_attention("text_config", self.backend, self._text_attention)
        if self.vision_layers:
            modules = self.adapter.vision_attention_modules()
            self._vision_layer_of = {id(m): i for i, m in enumerate(modules)}
            self._vision_backend = modules[0].config._attn_implementation
            self._use_attention(self.adapter.vision_config_key, self._vision_backend, self._vision_attention)
        # always: under generate the tower's arguments (e.g. Qwen's grid_thw) are the only record of the
        # items' layouts, which every policy needs to locate the visual tokens
        tower = self.adapter.vision_tower
        self._handles.append(tower.register_forward_pre_hook(self._before_vision_tower, with_kwargs=True))
        if self.vision_layers:
            self._handles.append(tower.register_forward_hook(lambda *_: self._flush_vision_masses()))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._saved_backends:
            self.model.set_attn_implementation(dict(self._saved_backends))
        for name in self._registered:
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)
        self._registered.clear()
        self.request = None

    def _use_attention(self, config_key: str, backend: str, function: Any) -> None:
        # the name keeps "flash" when the backend has it: transformers branches on that substring
        name = f"{self.name}_{config_key.split('_')[0]}_{backend}"
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[backend])
        self._registered.append(name)
        self._saved_backends[config_key] = backend
        self.model.set_attn_implementation({config_key: name})

    # -- model forward: start or continue a request ------------------------------------------------------
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = _bind_positional(module, args, kwargs)
        if "past_key_values" in kwargs:  # the deprecated name of `cache`
            kwargs["cache"] = kwargs.pop("past_key_values")
        cache = kwargs.get("cache")
        request = self.request
        if cache is None or cache.get_seq_length() == 0:
            self._start_request(kwargs, cache)
        elif request is not None and cache is request.cache_ref():
            self._continue_request(kwargs, request)
        else:
            raise UnsupportedModelError(
                f"a compressed model cannot continue from a {type(cache).__name__} it did not fill in this "
                "request; call generate/forward without a cache (vlmzip builds its own)"
            )
        return (), kwargs

    def _start_request(self, kwargs: dict, cache: Any) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None and (self.policy.vision is not None or self.policy.prefill is not None):
            raise InputError("vlmzip finds visual tokens by their placeholder ids: pass input_ids, not inputs_embeds")
        if any(kwargs.get(name) is not None for name in ("pixel_values", "pixel_values_videos")):
            self.vision_runs.clear()  # this forward encodes its own images: earlier runs are stale
        prompt = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
        mask = kwargs.get("attention_mask")
        prompt_valid = (
            mask.bool() if mask is not None else torch.ones(prompt.shape, dtype=torch.bool, device=prompt.device)
        )
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(self.text_config, "use_cache", True)
        if use_cache:
            cache = self._fresh_cache(cache)
            kwargs["cache"] = cache
        inputs = {key: value for key, value in kwargs.items() if key != "cache"}  # the caller owns the cache
        self.request = Request(inputs, prompt_valid, _weak(cache), step_length=prompt.shape[1])
        # found before the model runs, so a placeholder mismatch fails before any work is done
        self._find_visual_tokens(self.request)

    def _fresh_cache(self, cache: Any) -> CompressedCache:
        if cache is None or type(cache).__name__ == "DynamicCache":
            return CompressedCache(self.text_config)
        if isinstance(cache, CompressedCache):
            return cache
        raise UnsupportedModelError(
            f"vlmzip needs its own KV cache, but got a {type(cache).__name__}; pass no cache or a DynamicCache"
        )

    def _continue_request(self, kwargs: dict, request: Request) -> None:
        if any(kwargs.get(name) is not None for name in ("pixel_values", "pixel_values_videos")):
            raise InputError("a compressed model cannot take new images or videos in the middle of a request")
        cache = kwargs["cache"]
        new = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        batch, length = new.shape[:2]
        mask = kwargs.get("attention_mask")
        valid = (
            mask[:, -length:].bool()
            if mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=new.device)
        )
        positions = (torch.arange(length, device=new.device) + cache.logical_length).expand(batch, -1)
        request.step = RowMeta(valid, torch.zeros_like(valid), positions)
        request.step_masks.clear()
        cache.facts.clear()
        if kwargs.get("position_ids") is None:
            position_ids = self.adapter.decode_position_ids(kwargs, cache)
            if position_ids is not None:
                kwargs["position_ids"] = position_ids
        # every layer gets its own mask from its cache layer (their stored lengths differ)
        kwargs["attention_mask"] = None
        request.step_length = length

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        request = self.request
        if request is None:
            return
        cache = request.cache_ref()
        if request.phase == "prefill":
            if cache is not None and self.policy.decode is not None:
                self._evict(cache)
            request.phase = "decode"
        if cache is not None:
            cache.logical_length += request.step_length
            # references only (no device work): stats are counted when asked for
            request.kv_rows = [(layer.valid, layer.visual) for layer in cache.layers]
            request.kv_bytes = cache.nbytes()
        self.last_request = request

    # -- vision stage --------------------------------------------------------------------------------------
    def _before_language_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        request = self.request
        if request is None or request.phase != "prefill" or request.rows_valid is not None:
            return None
        runs, self._runs_used = self.vision_runs, True
        all_rows = torch.arange(request.visual.shape[1], device=request.visual.device).expand_as(request.visual)
        method = self.policy.vision
        if method is None or not request.items:
            request.set_rows(request.prompt_valid, all_rows, None)
            return None
        embeds = kwargs["inputs_embeds"]
        if "vision_attention" in method.needs:
            _index_encoded_items(request.items, sum(run.count for run in runs))
            self.adapter.vision_scores(runs, request.items)
        keep = request.prompt_valid & ~request.visual
        kept = [0] * len(request.rows_count)
        for item in request.items:
            item.features = embeds[item.sample, item.positions]
            local = method.select(item)
            keep[item.sample, item.positions[local.to(item.positions.device)]] = True
            kept[item.sample] += len(local)
        if kept == request.visual_count:
            request.set_rows(request.prompt_valid, all_rows, None)
            request.record("vision", kept)
            return None
        width = max(rows - old + new for rows, old, new in zip(request.rows_count, request.visual_count, kept))
        index, valid = pack_left(keep, width)
        kwargs["inputs_embeds"] = gather_rows(embeds, index, dim=1)
        kwargs["attention_mask"] = self._cut_language_model_mask(kwargs.get("attention_mask"), index, valid)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(keep.shape[1], device=embeds.device).unsqueeze(0)
        kwargs["position_ids"] = _gather_positions(positions, index)
        self.adapter.cut_language_model_inputs(kwargs, keep, index, valid)
        request.set_rows(valid, index, None)
        request.record("vision", kept)
        return args, kwargs

    def _find_visual_tokens(self, request: Request) -> None:
        if request.inputs.get("input_ids") is None:
            request.visual = torch.zeros_like(request.prompt_valid)
        else:
            request.items = self.adapter.visual_items(request.inputs, self.vision_runs)
            request.visual = torch.zeros_like(request.prompt_valid)
            for item in request.items:
                request.visual[item.sample, item.positions] = True
        counts = torch.stack([(request.visual & request.prompt_valid).sum(dim=1), request.prompt_valid.sum(dim=1)])
        request.visual_in, request.rows_count = counts.tolist()
        request.visual_count = list(request.visual_in)

    def _cut_language_model_mask(self, mask: Any, index: torch.Tensor, valid: torch.Tensor) -> Any:
        if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            return valid.long()
        dtype = self.adapter.language_model.dtype
        if isinstance(mask, dict):  # masks already built per layer type (Gemma-3's bidirectional image blocks)
            window = getattr(self.text_config, "sliding_window", None)
            return {
                kind: cut_mask(
                    m, index, valid, self.backend, window if "sliding" in kind else None, dtype, self.text_config
                )
                for kind, m in mask.items()
            }
        return cut_mask(mask, index, valid, self.backend, None, dtype, self.text_config)

    def _before_vision_tower(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._runs_used:  # a new encoding: the previous images are done with
            self.vision_runs, self._runs_used = [], False
        grids = self.adapter.tower_grids(args, kwargs)
        self.vision_runs.append(VisionRun(grids, self.adapter.tower_count(args, kwargs)))

    def _vision_attention(self, module, query, key, value, attention_mask, **kwargs):
        output = self._base_attention(self._vision_backend, module)(module, query, key, value, attention_mask, **kwargs)
        layer = self._vision_layer_of.get(id(module))
        if self.vision_runs and layer in self.vision_layers:
            if self._pending and self._pending[0][0] != layer:
                self._flush_vision_masses()
            cls_only = self.adapter.vision_query == "cls"
            rows = query[:, :, :1] if cls_only else query
            scaling = kwargs.get("scaling", getattr(module, "scaling", query.shape[-1] ** -0.5))
            cu_seqlens = None if cls_only else kwargs.get("cu_seq_lens_q")
            for part_rows, part_key, part_mask in _segments(rows, key, attention_mask, cu_seqlens):
                self._pending.append((layer, part_rows, part_key, scaling, part_mask))
        return output

    def _flush_vision_masses(self) -> None:
        """Attention mass of the pending calls of one layer, computed in one batch per chunk shape (a video's
        windows number in the thousands: one small computation each would cost more than the tower)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        masses: list[torch.Tensor | None] = [None] * len(pending)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for order, (_, rows, key, scaling, mask) in enumerate(pending):
            groups[(rows.shape[1:], key.shape[1:], scaling, None if mask is None else mask.shape[1:])].append(order)
        for members in groups.values():
            rows = torch.cat([pending[i][1] for i in members])
            key = torch.cat([pending[i][2] for i in members])
            mask = pending[members[0]][4]
            if mask is not None:
                mask = torch.cat([pending[i][4].expand(pending[i][1].shape[0], *mask.shape[1:]) for i in members])
            parts = attention_mass(rows, key, pending[members[0]][3], mask).split(
                [pending[i][1].shape[0] for i in members]
            )
            for i, part in zip(members, parts):
                masses[i] = part
        self.vision_runs[-1].attention.setdefault(pending[0][0], []).extend(masses)

    # -- prefill stage and per-layer bookkeeping ----------------------------------------------------------
    def _layer_hook(self, idx: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            request = self.request
            if request is None:
                return None
            if not args:
                args = (kwargs.pop("hidden_states"),)
            cache = kwargs.get("cache")
            layer = cache.layers[idx] if isinstance(cache, CompressedCache) else None
            if request.phase == "prefill":
                args = self._prefill_layer(idx, request, args, kwargs)
                if layer is not None:
                    layer.incoming = RowMeta(request.rows_valid, request.rows_visual, request.rows_prompt)
            elif layer is not None:
                kwargs["attention_mask"] = self._decode_mask(request, layer, args[0].dtype)
                layer.incoming = request.step
            return args, kwargs

        return hook

    def _decode_mask(self, request: Request, layer: CompressedLayer, dtype: torch.dtype) -> Any:
        """The mask of a decode step's rows over ``layer``'s entries and themselves, built once per distinct
        history (layers fed the same rows share their row-fact tensors)."""
        window = layer.sliding_window
        key = (id(layer.valid), id(layer.positions) if window else None)
        if key not in request.step_masks:
            step = request.step
            kv_valid = torch.cat([layer.valid, step.valid.to(layer.valid.device)], dim=1)
            # positions continue the padded prompt: a sliding window after a cut spans what it spanned at
            # prefill (positions), not its width in stored entries
            kv_positions = torch.cat([layer.positions, step.position.to(layer.valid.device)], dim=1) if window else None
            mask = layer_mask(
                self.backend, kv_valid, step.valid.shape[1], window, dtype, self.text_config, kv_positions
            )
            request.step_masks[key] = (layer.valid, layer.positions, mask)  # holding them keeps the ids unique
        return request.step_masks[key][2]

    def _prefill_layer(self, idx: int, request: Request, args: tuple, kwargs: dict) -> tuple:
        method = self.policy.prefill
        if method is not None and idx == method.layer:
            args = self._prefill_cut(request, method.score(request.scores), args, kwargs)
        if request.lm_index is not None:
            window, dtype = self._sliding_window(idx), args[0].dtype
            for name in ("attention_mask", "position_embeddings", "position_ids"):
                if name in kwargs:
                    kwargs[name] = self._cut_input(request, name, kwargs[name], window, dtype)
        return args

    def _prefill_cut(self, request: Request, scores: torch.Tensor, args: tuple, kwargs: dict) -> tuple:
        counts = [kept_count(self.policy.prefill.keep, n) for n in request.visual_count]
        if counts == request.visual_count:
            request.record("prefill", counts)
            return args
        budget = torch.tensor(counts, device=scores.device)
        chosen = top_k_mask(scores, request.rows_visual & request.rows_valid, budget)
        keep = (request.rows_valid & ~request.rows_visual) | chosen
        width = max(rows - old + new for rows, old, new in zip(request.rows_count, request.visual_count, counts))
        index, valid = pack_left(keep, width)
        lm_index = index if request.lm_index is None else request.lm_index.gather(1, index)
        request.set_rows(valid, request.rows_prompt.gather(1, index), lm_index)
        request.record("prefill", counts)
        return (gather_rows(args[0], index, dim=1), *args[1:])

    def _cut_input(self, request: Request, name: str, value: Any, window: int | None, dtype) -> Any:
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
            cut = _gather_positions(value, index)
        request.cut_inputs[key] = (value, cut)  # holding `value` keeps its id from being reused
        return cut

    def _sliding_window(self, idx: int) -> int | None:
        layer_types = getattr(self.text_config, "layer_types", None)
        if layer_types and layer_types[idx] == "sliding_attention":
            return self.text_config.sliding_window
        return None

    def _text_attention(self, module, query, key, value, attention_mask, **kwargs):
        request = self.request
        if (
            request is not None
            and request.phase == "prefill"
            and module.layer_idx in self.policy.prefill.score_layers()
        ):
            request.scores[module.layer_idx] = _last_row_mass(module, query, key, attention_mask, kwargs)
        return self._base_attention(self.backend, module)(module, query, key, value, attention_mask, **kwargs)

    def _base_attention(self, backend: str, module: nn.Module):
        if backend != "eager":
            return ALL_ATTENTION_FUNCTIONS[backend]
        kind = type(module)
        if kind not in self._eager:  # each model file defines its own eager attention
            self._eager[kind] = inspect.getmodule(kind).eager_attention_forward
        return self._eager[kind]

    # -- decode stage --------------------------------------------------------------------------------------
    def _evict(self, cache: CompressedCache) -> None:
        """Run the decode-stage method on every full-attention layer, batched over layers that hold the same
        rows (their candidates and budgets are identical)."""
        method = self.policy.decode
        groups: dict[int, list[CompressedLayer]] = defaultdict(list)
        for layer in cache.layers:
            if layer.is_initialized and not layer.is_sliding:
                groups[id(layer.valid)].append(layer)
        for layers in groups.values():
            valid, visual = layers[0].valid, layers[0].visual
            candidates = visual & valid
            available, stored = torch.stack([candidates.sum(dim=1), valid.sum(dim=1)]).tolist()
            counts = [kept_count(method.keep, n) for n in available]
            if counts == available:
                continue
            width = max(rows - old + new for rows, old, new in zip(stored, available, counts))
            copies = len(layers)
            scores = torch.cat([method.score(layer) for layer in layers])  # [copies * B, S]
            budget = torch.tensor(counts, device=scores.device).repeat(copies)
            chosen = top_k_mask(scores, candidates.repeat(copies, 1), budget)
            index, kept = pack_left((valid & ~visual).repeat(copies, 1) | chosen, width)
            shared = kept[: valid.shape[0]]  # the same budget per sample: every copy has the same padding
            for layer, rows in zip(layers, index.split(valid.shape[0])):
                layer.keep_entries(rows, shared)

    def stats(self) -> Stats | None:
        """Counts of the last request that finished a forward (computed now, from references kept then)."""
        request = self.last_request
        if request is None:
            return None
        stats = Stats(str(self.policy), request.visual_in, dict(request.kept), request.kept_positions())
        if request.kv_rows:
            stats.kv_entries = [valid.sum(dim=1).tolist() if valid is not None else [] for valid, _ in request.kv_rows]
            stats.kv_visual_entries = [
                (visual & valid).sum(dim=1).tolist() if valid is not None else [] for valid, visual in request.kv_rows
            ]
            stats.kv_bytes = request.kv_bytes
        return stats


def _weak(cache: CompressedCache | None) -> Callable[[], CompressedCache | None]:
    return weakref.ref(cache) if cache is not None else lambda: None


def _bind_positional(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    if not args:
        return dict(kwargs)
    names = [p for p in inspect.signature(module.forward).parameters if p not in ("args", "kwargs")]
    return {**dict(zip(names, args)), **kwargs}


def _index_encoded_items(items: list[VisualItem], encoded: int) -> None:
    """Point each item's ``kind_index`` at the vision-tower output it came from.

    ``generate`` encodes images once, then repeats each sample ``k`` times for beam search or several
    return sequences: there are then ``k`` times more items than encoded ones, sample ``s`` being a copy of
    original sample ``s // k``.
    """
    if not items or len(items) == encoded:
        return
    if encoded == 0 or len(items) % encoded:
        raise InputError(f"{len(items)} images/videos in the prompts but {encoded} were encoded by the vision tower")
    copies = len(items) // encoded
    for kind in {item.kind for item in items}:
        same = sorted((item for item in items if item.kind == kind), key=lambda item: item.kind_index)
        first_of_group: dict[int, int] = {}  # expanded-order index of the first item of each original sample
        for order, item in enumerate(same):
            first_of_group.setdefault(item.sample // copies, order)
        within_sample: dict[int, int] = {}
        for item in same:
            local = within_sample.get(item.sample, 0)
            within_sample[item.sample] = local + 1
            item.kind_index = first_of_group[item.sample // copies] // copies + local


def _gather_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cut position ids ``[B, L]``, ``[1, L]`` or multimodal ``[3 | 4, B, L]`` to rows ``index``."""
    return gather_rows(positions, index, dim=positions.dim() - 1, batch_dim=positions.dim() - 2)


def _last_row_mass(module, query, key, attention_mask, kwargs) -> torch.Tensor:
    """Head-averaged attention of the last row (the last prompt token) over every key, ``[B, K]``."""
    if attention_mask is not None:
        attention_mask = (
            attention_mask[:, None, None, :].bool() if attention_mask.dim() == 2 else attention_mask[:, :, -1:, :]
        )
    scaling = kwargs.get("scaling", getattr(module, "scaling", query.shape[-1] ** -0.5))
    return attention_mass(query[:, :, -1:], key, scaling, attention_mask, softcap=kwargs.get("softcap"))


def _segments(rows, key, mask, cu_seqlens):
    """The packed sequences (``cu_seqlens``, flash attention's layout) of one vision attention call."""
    if cu_seqlens is None:
        return [(rows, key, mask)]
    bounds = cu_seqlens.tolist()
    return [(rows[:, :, a:b], key[:, :, a:b], None) for a, b in zip(bounds[:-1], bounds[1:])]
