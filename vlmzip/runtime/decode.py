"""The decode stage: run the decode method over the cache's layers when it is due, give every decoder layer its own
mask during generation (layers store different entries once a method ran), and, where a layer's store is quantized,
compute the decode step's attention from the store as it is (``attend``: the packed cache is never expanded)."""

from __future__ import annotations

from typing import Any

import torch

from vlmzip.runtime.attention import scaling
from vlmzip.runtime.cache import CompressedCache, CompressedLayer
from vlmzip.runtime.masks import layer_mask
from vlmzip.runtime.request import Request
from vlmzip.stages import AttentionFunction, DecodeMethod, LayerEntries


class DecodeStage:
    """The decode method of one session (``None``: the cache only keeps generation's bookkeeping right)."""

    def __init__(self, method: DecodeMethod | None, text_config: Any, backend: str) -> None:
        self.method, self.text_config, self.backend = method, text_config, backend

    @property
    def reads_packed(self) -> bool:
        """Whether decode steps read quantized stores packed: the method ``quantizes``, so the session routes the
        text config's attention through ``attend`` and the cache hands the model placeholders for those layers."""
        return self.method is not None and self.method.quantizes

    def after_forward(self, request: Request, cache: CompressedCache) -> None:
        """Run the method on every full-attention layer if it is due after this forward."""
        if self.method is None or not self.method.due(request.step):
            return
        counts: dict[int, tuple[list[int], list[int]]] = {}  # id(valid) -> (visual, all) entries per sample
        shared: dict[tuple, torch.Tensor] = {}  # layers keeping equal counts share one valid tensor
        final = _prompt_final(request)
        for idx, layer in enumerate(cache.layers):
            if not layer.is_initialized or layer.is_sliding:
                continue
            if id(layer.valid) not in counts:  # layers fed the same rows share their row facts
                candidates = layer.visual & layer.valid
                visual, stored = torch.stack([candidates.sum(dim=1), layer.valid.sum(dim=1)]).tolist()
                counts[id(layer.valid)] = (visual, stored)
            visual, stored = counts[id(layer.valid)]
            entries = self._entries(idx, layer, request, visual, stored, final)
            result = self.method.encode(entries, self.method.compress(entries))
            if result is None:
                continue
            if result.index is None:  # every entry in place, in another form: the row facts stay shared
                layer.store = result.store
                continue
            width = result.index.shape[1]
            key = (tuple(result.counts), width)
            if result.valid is not None:  # the method laid its entries out itself
                valid = result.valid.to(layer.valid.device)
            elif key in shared:
                valid = shared[key]
            else:
                columns = torch.arange(width, device=layer.valid.device)
                valid = shared[key] = columns >= width - torch.tensor(result.counts, device=layer.valid.device)[:, None]
            layer.keep_entries(result.index, valid, result.store)

    def _entries(
        self,
        idx: int,
        layer: CompressedLayer,
        request: Request,
        visual: list[int],
        stored: list[int],
        final: torch.Tensor,
    ) -> LayerEntries:
        keys, values = layer.store.read()
        captured = request.attention.get(("decode", idx))
        return LayerEntries(
            idx,
            keys,
            values,
            layer.valid,
            layer.visual,
            layer.positions,
            visual,
            stored,
            step=request.step,
            attention=captured.mass() if captured is not None and request.step == 0 else None,
            prompt_final=final,
            store=layer.store,
        )

    def attend(self, request: Request, base: AttentionFunction, module, query, key, value, attention_mask, **kwargs):
        """A decode step's attention for one layer: the model's own ``base`` unless the layer's store can attend
        (``CompressedLayer.packed_step``: then ``key``/``value`` are placeholders), in which case the store computes
        it over its packed entries and window under the layer's ``valid`` (the step's own entries included). Calls the
        kernel cannot serve (several rows, which must stay causal among themselves; soft-capped or windowed logits;
        nothing packed yet) run ``base`` over the dequantized ``read()`` with the mask the layer was given."""
        cache = request.cache_ref()
        layer = cache.layers[module.layer_idx] if cache is not None else None
        if layer is None or not layer.packed_step:
            return base(module, query, key, value, attention_mask, **kwargs)
        plain = query.shape[2] == 1 and all(kwargs.get(name) is None for name in ("softcap", "sliding_window", "s_aux"))
        out = layer.store.attend(query, scaling(module, query, kwargs), layer.valid) if plain else None
        if out is None:
            return base(module, query, *layer.store.read(), attention_mask, **kwargs)
        return out.transpose(1, 2).contiguous(), None

    def layer_mask(self, request: Request, layer: CompressedLayer, dtype: torch.dtype) -> Any:
        """The mask of a decode step's rows over ``layer``'s entries and themselves, built once per distinct
        history (layers fed the same rows share their row-fact tensors)."""
        window = layer.sliding_window
        key = (id(layer.valid), id(layer.positions) if window else None)
        if key not in request.step_masks:
            step = request.step_rows
            kv_valid = torch.cat([layer.valid, step.valid.to(layer.valid.device)], dim=1)
            # positions continue the padded prompt: a sliding window after a cut spans what it spanned at
            # prefill (positions), not its width in stored entries
            kv_positions = torch.cat([layer.positions, step.position.to(layer.valid.device)], dim=1) if window else None
            mask = layer_mask(
                self.backend, kv_valid, step.valid.shape[1], window, dtype, self.text_config, kv_positions
            )
            request.step_masks[key] = (layer.valid, layer.positions, mask)  # holding them keeps the ids unique
        return request.step_masks[key][2]


def _prompt_final(request: Request) -> torch.Tensor:
    """``[B, P]``: the prompt columns whose rows the prompt pass's last layer held (what survived every cut)."""
    final = torch.zeros(request.prompt_valid.shape, dtype=torch.long, device=request.rows_prompt.device)
    # added, not scattered: the result does not depend on which of two rows naming one column is written last
    return final.scatter_add_(1, request.rows_prompt, request.rows_valid.long()) > 0
