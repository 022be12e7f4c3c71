"""Carries out a policy on one model instance: the hooks that start and continue requests, and the stages.

``Session.install`` registers, on that model only:

* a forward pre-hook and hook on the model: start a request (find visual tokens, give ``generate`` a
  ``CompressedCache``) or continue one (a decode step); after each forward, the decode stage;
* a forward pre-hook on the language model: the vision stage's cut (``runtime.vision``);
* a forward pre-hook on every decoder layer: the prefill stage's schedule during the prompt pass
  (``runtime.prefill``), row facts for the cache, and per-layer masks during decoding (``runtime.decode``);
* hooks on the vision tower, and attention functions wrapping the model's own backends where a method reads
  attention or replaces it, or where decode steps read a quantized cache packed (``runtime.attention``).

``remove`` undoes every one of these.
"""

from __future__ import annotations

import inspect
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlmzip.adapter import Adapter
from vlmzip.errors import InputError, UnsupportedModelError
from vlmzip.policy import Policy
from vlmzip.runtime.attention import AttentionFunctions
from vlmzip.runtime.cache import CompressedCache, RowMeta, store_byte_parts
from vlmzip.runtime.decode import DecodeStage
from vlmzip.runtime.prefill import PrefillStage
from vlmzip.runtime.request import Request
from vlmzip.runtime.vision import VisionStage
from vlmzip.stats import Stats

_SESSION_IDS = itertools.count()
_SUPPORTED_BACKENDS = ("eager", "sdpa")
_PIXELS = ("pixel_values", "pixel_values_videos")


class Session:
    """One policy installed on one model instance."""

    def __init__(self, model: nn.Module, policy: Policy, adapter: Adapter) -> None:
        self.model, self.policy, self.adapter = model, policy, adapter
        self.text_config = adapter.text_config
        backend = self.text_config._attn_implementation
        if backend not in _SUPPORTED_BACKENDS and "flash" not in str(backend):
            raise UnsupportedModelError(
                f"attention backend {backend!r} is not supported by vlmzip; load the model with "
                "attn_implementation='sdpa', 'eager' or 'flash_attention_2'"
            )
        info = adapter.model_info()
        for method in policy.methods():
            method.check_model(info)
        self.request: Request | None = None
        self.last_request: Request | None = None  # the last request that ran to the end of a forward
        self.vision = VisionStage(adapter, policy.vision, info, backend)
        self.backend = backend
        self.prefill = PrefillStage(policy.prefill, policy.decode, info, self.text_config, backend)
        self.decode = DecodeStage(policy.decode, self.text_config, backend)
        self.functions = AttentionFunctions(model, f"vlmzip{next(_SESSION_IDS)}")
        self._handles: list[Any] = []

    def install(self) -> None:
        self._handles += [
            self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            self.model.register_forward_hook(self._after_forward, with_kwargs=True),
            self.adapter.language_model.register_forward_pre_hook(self._before_language_model, with_kwargs=True),
        ]
        for idx, layer in enumerate(self.adapter.decoder_layers):
            self._handles.append(layer.register_forward_pre_hook(self._layer_hook(idx), with_kwargs=True))
        if self.prefill.needs_attention or self.decode.reads_packed:
            self.functions.use("text_config", self.backend, self._text_attention)
        self._handles += self.vision.install(self.functions)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.functions.remove()
        self.request = None

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
        if any(kwargs.get(name) is not None for name in _PIXELS):
            self.vision.new_encoding()
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
        self.vision.find_items(self.request)

    def _fresh_cache(self, cache: Any) -> CompressedCache:
        if cache is None or type(cache).__name__ == "DynamicCache":
            return CompressedCache(self.text_config, read_packed=self.decode.reads_packed)
        if isinstance(cache, CompressedCache):
            for layer in cache.layers:
                layer.read_packed = self.decode.reads_packed
            return cache
        raise UnsupportedModelError(
            f"vlmzip needs its own KV cache, but got a {type(cache).__name__}; pass no cache or a DynamicCache"
        )

    def _continue_request(self, kwargs: dict, request: Request) -> None:
        if any(kwargs.get(name) is not None for name in _PIXELS):
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
        request.step_rows = RowMeta(valid, torch.zeros_like(valid), positions)
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
        if cache is not None:
            self.decode.after_forward(request, cache)
            cache.logical_length += request.step_length
            # references only (no device work): stats are counted when asked for
            request.kv_rows = [(layer.valid, layer.visual) for layer in cache.layers]
            request.kv_stores = [layer.store for layer in cache.layers]
        request.phase = "decode"
        request.step += 1
        self.last_request = request

    # -- the language model and its layers -----------------------------------------------------------------
    def _text_attention(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        """The text config's attention (registered only where a stage needs it): the prompt pass's to the prefill
        stage (captures, a method's ``attend``), decode steps' to the decode stage (quantized stores read packed)."""
        request = self.request
        base = self.functions.base(self.backend, module)
        if request is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        stage = self.prefill if request.phase == "prefill" else self.decode
        return stage.attend(request, base, module, query, key, value, attention_mask, **kwargs)

    def _before_language_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        request = self.request
        if request is None or request.phase != "prefill" or request.rows_valid is not None:
            return None
        return (args, kwargs) if self.vision.cut(request, kwargs) else None

    def _layer_hook(self, idx: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            request = self.request
            if request is None:
                return None
            if not args:
                args = (kwargs.pop("hidden_states"),)
            cache = kwargs.get("cache")
            layer = cache.layers[idx] if isinstance(cache, CompressedCache) else None
            if request.phase == "prefill":
                args = (self.prefill.before_layer(idx, request, args[0], kwargs), *args[1:])
                if layer is not None:
                    layer.incoming = RowMeta(request.rows_valid, request.rows_visual, request.rows_prompt)
            elif layer is not None:
                kwargs["attention_mask"] = self.decode.layer_mask(request, layer, args[0].dtype)
                layer.incoming = request.step_rows
            return args, kwargs

        return hook

    def stats(self) -> Stats | None:
        """Counts of the last request that finished a forward (computed now, from references kept then)."""
        request = self.last_request
        if request is None:
            return None
        stats = Stats(
            str(self.policy), request.visual_in, dict(request.kept), request.kept_positions(), request.visual_by_layer
        )
        stats.attention_density = request.density_by_layer()
        if request.kv_rows:
            stats.kv_entries = [valid.sum(dim=1).tolist() if valid is not None else [] for valid, _ in request.kv_rows]
            stats.kv_visual_entries = [
                (visual & valid).sum(dim=1).tolist() if valid is not None else [] for valid, visual in request.kv_rows
            ]
            stats.kv_bytes_by_layer = [store_byte_parts(store) for store in request.kv_stores]
            stats.kv_bytes = sum(0 if store is None else store.nbytes for store in request.kv_stores)
        return stats


def _weak(cache: CompressedCache | None) -> Callable[[], CompressedCache | None]:
    return weakref.ref(cache) if cache is not None else lambda: None


def _bind_positional(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    if not args:
        return dict(kwargs)
    names = [p for p in inspect.signature(module.forward).parameters if p not in ("args", "kwargs")]
    return {**dict(zip(names, args)), **kwargs}
