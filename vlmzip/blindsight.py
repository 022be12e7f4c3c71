"""BlindSight's per-head templates: the block masks of a multi-image prompt, their calibration and its file.

A prompt is read as *documents*: the text before the first image or video, then each visual item with the text that
follows it up to the next item. The instruction (text after the last item) sees everything. Every other query block
sees, by its head's template (``TEMPLATES``, sparsest first):

* ``sink``: only the blocks every sparse method keeps (the first key block, the attention sink, and the diagonal);
* ``intra-image``: the key blocks of its own document(s) (no cross-image blocks);
* ``intra-image+sink``: those and the first block of every earlier document (each image's own sink tokens);
* ``dense``: every causal block.

``calibrate_blindsight(model, prompts, path)`` runs the model's prompt pass on a few multi-image prompts with dense
attention, measures for each layer and query head the mean attention mass each template keeps (over the rows the
templates restrict), gives the head the sparsest template keeping at least ``recall`` of it, and writes a JSON file
recording the model type, layer count and query/key-value head counts beside the templates. The ``blindsight``
method names that file (``blindsight:calibration=PATH``) and refuses it on another model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmzip.errors import PolicyError
from vlmzip.sparse import Layout, block_sum, candidate_blocks, forced_blocks, mask_layout, visible
from vlmzip.stages import ModelInfo, PrefillMethod, PromptLayer

TEMPLATES = ("sink", "intra-image", "intra-image+sink", "dense")
FORMAT = "vlmzip-blindsight/1"
_ROWS = 256  # query rows whose attention calibration holds at once


@dataclass(frozen=True)
class Calibration:
    """A calibration file's content: ``templates[layer][head]`` (names from ``TEMPLATES``) and the model it is for."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    templates: tuple[tuple[str, ...], ...]
    recall: float = 0.9
    block: int = 128
    prompts: int = 0

    def check(self, info: ModelInfo, path: str) -> None:
        """``PolicyError`` naming the first way the file does not fit the model ``info`` describes."""
        mine = {"model type": self.model_type, "layers": self.layers, "heads": self.heads, "kv heads": self.kv_heads}
        theirs = {
            "model type": info.model_type,
            "layers": info.num_layers,
            "heads": info.heads,
            "kv heads": info.kv_heads,
        }
        for what, value in mine.items():
            if theirs[what] and value != theirs[what]:
                raise PolicyError(
                    f"blindsight: calibration {path} is for {what} {value!r}, this model has {theirs[what]!r}; "
                    "calibrate for it: vlmzip.calibrate_blindsight(model, prompts, path)"
                )


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration file (memoised while the file is unchanged); ``PolicyError`` if it cannot be used."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as error:
        raise PolicyError(
            f"blindsight: cannot read calibration {str(path)!r} ({error.strerror}); make one with "
            "vlmzip.calibrate_blindsight(model, prompts, path)"
        ) from None
    return _load(str(path), stamp)


@lru_cache(maxsize=8)
def _load(path: str, stamp: int) -> Calibration:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        templates = tuple(tuple(layer) for layer in data["templates"])
        calibration = Calibration(
            data["model_type"],
            data["layers"],
            data["heads"],
            data["kv_heads"],
            templates,
            data.get("recall", 0.9),
            data.get("block", 128),
            data.get("prompts", 0),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise PolicyError(f"blindsight: {path} is not a BlindSight calibration file ({error})") from None
    unknown = {name for layer in templates for name in layer} - set(TEMPLATES)
    if unknown or len(templates) != calibration.layers or any(len(t) != calibration.heads for t in templates):
        raise PolicyError(
            f"blindsight: {path} must list one template of {', '.join(TEMPLATES)} per head ({calibration.heads}) of "
            f"each layer ({calibration.layers}); got {len(templates)} layers"
            + (f", unknown {sorted(unknown)}" if unknown else "")
        )
    return calibration


def template_blocks(items: torch.Tensor, lengths: torch.Tensor, block: int) -> torch.Tensor:
    """``[B, 4, n, n]`` bool: each template's blocks (``TEMPLATES`` order) for rows-first ``items [B, S]`` (each row's
    visual item, its order in the sample; -1 text) of samples ``lengths [B]`` long; before the blocks every method
    keeps are added and those outside the causal candidates removed."""
    batch, length = items.shape
    n = -(-length // block)
    rows = torch.arange(n * block, device=items.device)
    real = rows[None, :] < lengths[:, None]
    padded = torch.full((batch, n * block), -1, dtype=torch.long, device=items.device)
    padded[:, :length] = items
    doc = torch.cummax(padded + 1, dim=1).values  # the document: 0 before any item, k from item k - 1 on
    last = doc.amax(dim=1, keepdim=True)
    instruction = (padded < 0) & (doc == last) & (last > 0) & real
    big = torch.iinfo(torch.long).max
    lo = torch.where(real, doc, big).view(batch, n, block).amin(dim=-1)  # [B, n]
    hi = torch.where(real, doc, -1).view(batch, n, block).amax(dim=-1)
    dense_rows = instruction.view(batch, n, block).any(dim=-1)
    starts = torch.cat([real[:, :1], doc[:, 1:] != doc[:, :-1]], dim=1) & real
    first = starts.view(batch, n, block).any(dim=-1)  # key blocks holding a document's first row
    shared = (lo[:, None, :] <= hi[:, :, None]) & (hi[:, None, :] >= lo[:, :, None])  # [B, i, j]
    sink = dense_rows[:, :, None].expand(-1, -1, n)
    intra = sink | shared
    return torch.stack([sink, intra, intra | first[:, None, :], torch.ones_like(intra)], dim=1)


@dataclass(frozen=True)
class _Calibrating(PrefillMethod):
    """Measures, at every prompt-pass layer, the attention mass each template keeps per query head (dense
    attention runs as usual). ``mass[layer]`` accumulates ``[4, H]`` sums, ``rows[layer]`` the rows counted."""

    name = "blindsight-calibration"
    block: int = 128
    mass: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)

    def attend(self, layer: PromptLayer, base, module, query, key, value, attention_mask, **kwargs):
        layout = mask_layout(attention_mask, layer.rows.valid, kwargs.get("sliding_window") or layer.window)
        if layout is not None and key.shape[2] == query.shape[2]:
            scale = kwargs.get("scaling") or getattr(module, "scaling", None) or query.shape[-1] ** -0.5
            self._measure(
                layer, layout, *(layout.rows_first(x) for x in (query, key)), layout.rows_first(layer.items, 1), scale
            )
        return base(module, query, key, value, attention_mask, **kwargs)

    def _measure(self, layer: PromptLayer, layout: Layout, query, key, items, scale: float) -> None:
        batch, heads, length, _ = query.shape
        candidates = candidate_blocks(layout, length, self.block)
        masks = (template_blocks(items, layout.lengths, self.block) | forced_blocks(candidates)) & candidates
        restricted = (masks[:, 0] != masks[:, 3]).any(dim=-1)  # [B, n]: query blocks some template restricts
        key = key.repeat_interleave(heads // key.shape[1], dim=1).float()
        total = torch.zeros(len(TEMPLATES), heads, device=query.device)
        counted = 0
        for start in range(0, length, _ROWS):
            rows = torch.arange(start, min(start + _ROWS, length), device=query.device).expand(batch, -1)
            seen = visible(rows, layout, length)
            logits = (query[:, :, start : start + rows.shape[1]].float() @ key.transpose(-1, -2)) * scale
            probs = torch.softmax(logits.masked_fill(~seen[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
            by_block = block_sum(probs, self.block)  # [B, H, c, n]
            allowed = masks[:, :, rows[0] // self.block]  # [B, 4, c, n]
            keep = (restricted[:, rows[0] // self.block] & (rows < layout.lengths[:, None])).float()  # [B, c]
            kept = torch.einsum("bhcn,btcn,bc->th", by_block, allowed.float(), keep)
            total += kept
            counted += int(keep.sum())
        if counted:
            self.mass[layer.index] = self.mass.get(layer.index, 0) + total.cpu()
            self.rows[layer.index] = self.rows.get(layer.index, 0) + counted


def calibrate_blindsight(
    model: nn.Module,
    prompts: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    *,
    recall: float = 0.9,
    block: int = 128,
) -> Calibration:
    """Calibrate BlindSight's per-head templates on ``prompts`` (the model's forward arguments: multi-image prompts
    from a processor) and write them to ``path`` (JSON). A head gets the sparsest template that keeps at least
    ``recall`` of its attention on average; a layer the prompts never restricted stays dense. The model is used as it
    is (any policy installed is put back afterwards)."""
    from vlmzip.api import compress, policy_of, restore
    from vlmzip.policy import Policy
    from vlmzip.registry import adapter_for

    if not 0.0 < recall <= 1.0:
        raise PolicyError(f"calibrate_blindsight: recall={recall} must be in (0, 1]")
    info = adapter_for(model).model_info()
    calibrating = _Calibrating(block=block)
    previous = policy_of(model)
    compress(model, Policy(prefill=calibrating))
    count = 0
    try:
        with torch.no_grad():
            for inputs in prompts:
                model(**inputs, use_cache=False)
                count += 1
    finally:
        compress(model, previous) if previous is not None else restore(model)
    templates = []
    for index in range(info.num_layers):
        if index not in calibrating.rows:
            templates.append(("dense",) * info.heads)
            continue
        mean = calibrating.mass[index] / calibrating.rows[index]  # [4, H]
        fits = mean >= recall - 1e-6
        templates.append(
            tuple(TEMPLATES[int(fits[:, h].nonzero()[0]) if fits[:, h].any() else 3] for h in range(info.heads))
        )
    calibration = Calibration(
        info.model_type, info.num_layers, info.heads, info.kv_heads, tuple(templates), recall, block, count
    )
    data = {
        "format": FORMAT,
        **{
            k: getattr(calibration, k)
            for k in ("model_type", "layers", "heads", "kv_heads", "recall", "block", "prompts")
        },
    }
    data["templates"] = [list(layer) for layer in templates]
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return calibration
