"""The vision stage: find each request's images and videos, capture vision-tower signals, and hand the language
model the sequence the vision method chose (cut, with merged tokens written in).

The model encodes images exactly as it always does; the cut happens at the language model's input (a forward
pre-hook on the decoder stack), where ``inputs_embeds`` holds the projected features. Everything indexed by
sequence position is cut alike: embeddings, the mask (2D, or Gemma-3's dictionary of 4D masks), position ids
and the family's extras (``Adapter.cut_language_model_inputs``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from vlmzip.adapter import Adapter, VisionRun
from vlmzip.errors import InputError, UnsupportedModelError
from vlmzip.runtime.attention import AttentionFunctions, PackedChunks, scaling
from vlmzip.runtime.masks import cut_mask
from vlmzip.runtime.request import Request
from vlmzip.runtime.tower import TowerCut
from vlmzip.scoring import attention_mass, uses_kernel
from vlmzip.selection import gather_positions, gather_rows, pack_left
from vlmzip.stages import AttentionFunction, ModelInfo, VisionMethod, VisualItem, VisualSelection

# backends a tower that packs its chunks calls once per chunk (flash takes them in one call; others are left alone)
_CHUNKED_BACKENDS = ("sdpa", "eager")


class VisionStage:
    """The vision method of one session, and what the vision tower told about the current images."""

    def __init__(self, adapter: Adapter, method: VisionMethod | None, info: ModelInfo, backend: str) -> None:
        self.adapter, self.method, self.backend = adapter, method, backend
        self.layers = method.vision_layers(info) if method is not None else []
        # the vision-tower forwards behind the current images (generate encodes images before the prompt
        # pass, and once for all the passes of generate(use_cache=False)); replaced by the next encoding
        self.runs: list[VisionRun] = []
        self._runs_used = False
        self._layer_of: dict[int, int] = {}
        self._backend = ""
        # vision attention calls of the current layer (one per chunk: frame or window) awaiting their mass
        # (layer, query rows, keys, scaling, dense mask, cu_seqlens of a packed call)
        self._pending: list[tuple] = []
        self._functions: AttentionFunctions | None = None
        in_tower = method is not None and method.tower_layer is not None
        self.tower_cut = TowerCut(adapter, method, lambda: self.runs, self._flush) if in_tower else None
        self._tower_attention: AttentionFunction | None = None
        # the model's own tokenizer, loaded once per session, only for methods that read the question's text
        self.tokenizer = model_tokenizer(adapter.model) if method is not None and "text" in method.needs else None

    def install(self, functions: AttentionFunctions) -> list[Any]:
        """Register the tower hooks and, where it changes anything, the tower's attention function."""
        tower = self.adapter.vision_tower
        # always: under generate the tower's arguments (e.g. Qwen's grid_thw) are the only record of the
        # items' layouts, which every policy needs to locate the visual tokens
        handles = [tower.register_forward_pre_hook(self._before_tower, with_kwargs=True)]
        modules = self.adapter.vision_attention_modules()
        # a tower may list no attention layer (nothing to score or batch: its attention stays as it is)
        self._backend = modules[0].config._attn_implementation if modules else ""
        self._functions = functions
        # the one place that decides the tower's attention: its own backend, batched over chunks where the tower
        # would call it chunk by chunk (a flash backend already takes them in one call), wrapped by the scoring
        # function where the method reads tower attention
        packed = self.adapter.packs_vision_chunks and self._backend in _CHUNKED_BACKENDS
        self._tower_attention = (
            PackedChunks(self._base, contiguous=self._backend == "eager") if packed else self._call_base
        )
        if self.layers:
            self._layer_of = {id(m): i for i, m in enumerate(modules)}
            functions.use(self.adapter.vision_config_key, self._backend, self._attention, packed=packed)
            handles.append(tower.register_forward_hook(lambda *_: self._flush()))
        elif packed:
            functions.use(self.adapter.vision_config_key, self._backend, self._tower_attention, packed=True)
        if self.method is not None and "tower_features" in self.method.needs:
            handles.append(self.adapter.projector.register_forward_pre_hook(self._before_projector))
        if self.tower_cut is not None:
            handles += self.tower_cut.install()
        return handles

    def new_encoding(self) -> None:
        """The forward encodes its own images: earlier runs are stale."""
        self.runs.clear()

    def find_items(self, request: Request) -> None:
        """Locate the request's images and videos (before the model runs, so a mismatch fails fast)."""
        request.visual = torch.zeros_like(request.prompt_valid)
        if request.inputs.get("input_ids") is not None:
            request.items = self.adapter.visual_items(request.inputs, self.runs)
            if self.method is not None and "image" not in self.method.media:
                request.items = frames_as_videos(request.items)
            for item in request.items:
                request.visual[item.sample, item.positions] = True
            self._check_media(request.items)
        counts = torch.stack([(request.visual & request.prompt_valid).sum(dim=1), request.prompt_valid.sum(dim=1)])
        request.visual_in, request.rows_count = counts.tolist()
        request.visual_count = list(request.visual_in)

    def _check_media(self, items: list[VisualItem]) -> None:
        """Refuse, before the language model runs, an item of a kind the method does not prune (its ``media``)."""
        media = self.method.media if self.method is not None else frozenset({"image", "video"})
        for item in items:
            if item.kind not in media:
                raise InputError(
                    f"{self.method.name} prunes {' and '.join(sorted(media))} inputs only, but sample {item.sample} "
                    f"holds {item.kind} input ({item.num_tokens} tokens, grid {item.grid}); give video frames as a "
                    "video (the processor's videos=...) or as two or more images of one size per sample (and "
                    "nothing else), or use a vision method that takes images (uniform, visionzip, divprune, cdpruner)"
                )

    # -- the cut at the language model's input -------------------------------------------------------------
    def cut(self, request: Request, kwargs: dict[str, Any]) -> bool:
        """Apply the vision method to ``kwargs`` (the language model's inputs); True if they changed."""
        self._runs_used = True
        all_rows = torch.arange(request.visual.shape[1], device=request.visual.device).expand_as(request.visual)
        if self.method is None or not request.items:
            request.set_rows(request.prompt_valid, all_rows, None)
            return False
        embeds = kwargs["inputs_embeds"]
        self._signals(request, embeds)
        keep = request.prompt_valid & ~request.visual
        owner = torch.where(keep, all_rows, -1)  # the row that carries each row's content (-1: dropped)
        kept, merged = [0] * len(request.rows_count), []
        for item in request.items:
            item.features = embeds[item.sample, item.positions]
            item.project = self.adapter.project
        for item, selection in zip(request.items, self._selections(request.items), strict=True):
            rows = item.positions[selection.keep.to(item.positions.device)]
            keep[item.sample, rows] = True
            if selection.protected is not None:
                if request.protected is None:
                    request.protected = torch.zeros_like(keep)
                request.protected[item.sample, item.positions[selection.protected.to(item.positions.device)]] = True
            kept[item.sample] += len(rows)
            if selection.merged:
                sources = selection.sources.to(rows.device)
                owner[item.sample, item.positions] = torch.where(sources >= 0, rows[sources.clamp(min=0)], -1)
                merged.append((item.sample, rows, selection.embeddings))
            else:
                owner[item.sample, rows] = rows
        if kept == request.visual_count and not merged:
            request.set_rows(request.prompt_valid, all_rows, None)
            request.record("vision", kept)
            return False
        if merged:
            embeds = embeds.clone()
            for sample, rows, embeddings in merged:
                embeds[sample, rows] = embeddings.to(embeds.device, embeds.dtype)
        index, valid = pack_left(keep, request.width_after(kept))
        kwargs["inputs_embeds"] = gather_rows(embeds, index, dim=1)
        kwargs["attention_mask"] = self._cut_mask(kwargs.get("attention_mask"), index, valid)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(keep.shape[1], device=embeds.device).unsqueeze(0)
        kwargs["position_ids"] = gather_positions(positions, index)
        self.adapter.cut_language_model_inputs(kwargs, keep, owner, index, valid)
        request.set_rows(valid, index, None)
        request.record("vision", kept)
        return True

    def _selections(self, items: list[VisualItem]) -> list[VisualSelection]:
        """The method's choice for every item, in one call (a batched method chooses for all at once), or the
        choices made inside the tower for the images the items show."""
        if self.tower_cut is None:
            return self.method.select_batch(items)
        if any(item.frames for item in items):
            raise UnsupportedModelError(
                f"{self.method.name}: frames given as images are chosen after the vision tower only; drop at_layer, "
                "or give the frames as a video"
            )
        selections = []
        for item, (run, row) in zip(items, self.adapter.encoded_by(self.runs, items)):
            if run is None or run.choices is None or row >= len(run.choices):
                raise UnsupportedModelError(
                    f"{self.method.name}: chooses inside the vision tower (layer {self.method.tower_layer}), but this "
                    f"request's {item.kind} {item.kind_index} was not encoded by it (features passed precomputed?); "
                    "drop at_layer"
                )
            selections.append(VisualSelection(run.choices[row]))
        return selections

    def _cut_mask(self, mask: Any, index: torch.Tensor, valid: torch.Tensor) -> Any:
        """The language model's mask argument cut to rows ``index``: a 2D mask becomes the new padding; Gemma-3's
        per-layer-type dictionary of 4D masks (bidirectional image blocks) is sliced, keeping its pattern."""
        if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            return valid.long()
        config, dtype = self.adapter.text_config, self.adapter.language_model.dtype
        if isinstance(mask, dict):
            window = getattr(config, "sliding_window", None)
            return {
                kind: cut_mask(m, index, valid, self.backend, window if "sliding" in kind else None, dtype, config)
                for kind, m in mask.items()
            }
        return cut_mask(mask, index, valid, self.backend, None, dtype, config)

    def _signals(self, request: Request, embeds: torch.Tensor) -> None:
        needs = self.method.needs
        encoded = [frame for item in request.items for frame in (item.frames or [item])]  # as the tower saw them
        if "vision_attention" in needs:
            self.adapter.vision_scores(self.runs, encoded)
        if "tower_features" in needs:
            self.adapter.tower_features(self.runs, encoded)
        if "image" in needs:
            self.adapter.images(self.runs, encoded)
        for item in request.items:
            for name in (needs & {"vision_attention", "tower_features", "image"}) if item.frames else ():
                item.signals[name] = torch.cat([frame.signals[name] for frame in item.frames])
        text = request.prompt_valid & ~request.visual
        if "text_embeddings" in needs:
            for item in request.items:
                item.signals["text_embeddings"] = embeds[item.sample, text[item.sample]]
        if "text" in needs:
            questions = self._questions(request, text)
            for item in request.items:
                item.signals["text"] = questions[item.sample]

    def _questions(self, request: Request, text: torch.Tensor) -> list[str]:
        """Each sample's text after its last visual token (the question, where chat templates put it), decoded
        without special tokens; all its text where nothing follows its last visual token."""
        ids = request.inputs["input_ids"]
        last = torch.where(request.visual, torch.arange(ids.shape[1], device=ids.device), -1).amax(dim=1)
        after = text & (torch.arange(ids.shape[1], device=ids.device) > last[:, None])
        rows = torch.where(after.any(dim=1, keepdim=True), after, text)
        return [
            self.tokenizer.decode(ids[b, rows[b]].tolist(), skip_special_tokens=True).strip() for b in range(len(ids))
        ]

    # -- the vision tower ------------------------------------------------------------------------------------
    def _before_tower(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._runs_used:  # a new encoding: the previous images are done with
            self.runs, self._runs_used = [], False
        grids = self.adapter.tower_grids(args, kwargs)
        run = VisionRun(grids, self.adapter.tower_count(args, kwargs))
        if self.method is not None and "image" in self.method.needs:
            run.pixels = (args[0] if args else kwargs.get("pixel_values", kwargs.get("hidden_states"))).detach()
        self.runs.append(run)

    def _before_projector(self, module: nn.Module, args: tuple) -> None:
        if self.runs:  # the projector runs after (LLaVA, Gemma-3) or at the end of (Qwen) its tower's forward
            self.runs[-1].projector_inputs.append(args[0].detach())

    def _base(self, module: nn.Module) -> AttentionFunction:
        return self._functions.base(self._backend, module)

    def _call_base(self, module, query, key, value, attention_mask, **kwargs):
        return self._base(module)(module, query, key, value, attention_mask, **kwargs)

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        """The scoring wrapper: the tower's attention, and the mass of the captured layers' calls."""
        output = self._tower_attention(module, query, key, value, attention_mask, **kwargs)
        layer = self._layer_of.get(id(module))
        if self.runs and layer in self.layers:
            if self._pending and self._pending[0][0] != layer:
                self._flush()
            cls_only = self.adapter.vision_query == "cls"
            rows = query[:, :, :1] if cls_only else query
            cu_seqlens = None if cls_only else kwargs.get("cu_seq_lens_q")
            scale = scaling(module, query, kwargs)
            if uses_kernel(query):  # packed with the layer's other calls in _flush: the call stays whole
                mask = attention_mask if cu_seqlens is None else None
                self._pending.append((layer, rows, key, scale, mask, cu_seqlens))
            else:
                for part_rows, part_key, part_mask in _segments(rows, key, attention_mask, cu_seqlens):
                    self._pending.append((layer, part_rows, part_key, scale, part_mask, None))
        return output

    def _flush(self) -> None:
        """Attention mass of the pending calls of one layer, one tensor per chunk (frame or window) in call order,
        computed in one batch per chunk shape (a video's windows number in the thousands: one small computation
        each would cost more than the tower), or, where the kernel runs, in one call per layer."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        masses = _packed_masses(pending) if uses_kernel(pending[0][1]) else _grouped_masses(pending)
        self.runs[-1].attention.setdefault(pending[0][0], []).extend(masses)


def model_tokenizer(model: nn.Module) -> Any:
    """The tokenizer saved beside ``model``'s checkpoint (``name_or_path``), loaded offline."""
    from transformers import AutoTokenizer

    path = getattr(model, "name_or_path", "") or ""
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UnsupportedModelError(
            f"a method that reads the question's text decodes the prompt with the model's tokenizer, which vlmzip "
            f"loads offline from the directory the model was loaded from (model.name_or_path={path!r}), and that "
            f"failed ({type(error).__name__}: {error}); load the model with from_pretrained from a local directory "
            "that holds its tokenizer files (as saved by processor.save_pretrained)"
        ) from None


def frames_as_videos(items: list[VisualItem]) -> list[VisualItem]:
    """``items`` with each sample's images joined into one video of those frames, where the sample holds two or
    more images of one grid and nothing else (a frame list given as images); other items as they are."""
    by_sample: dict[int, list[VisualItem]] = defaultdict(list)
    for item in items:
        by_sample[item.sample].append(item)
    joined = []
    for sample, own in by_sample.items():
        grids = {item.grid for item in own}
        if len(own) < 2 or any(item.kind != "image" for item in own) or len(grids) > 1 or own[0].grid[0] != 1:
            joined += own
            continue
        _, rows, cols = own[0].grid
        positions = torch.cat([item.positions for item in own])
        joined.append(VisualItem(sample, -1, "video", positions, (len(own), rows, cols), own[0].kind_index, frames=own))
    for index, item in enumerate(joined):  # in request order: samples in order, one item per joined sample
        item.index = index
        item.sample_index = sum(other.sample == item.sample for other in joined[:index])
    return joined


def _grouped_masses(pending: list[tuple]) -> list[torch.Tensor]:
    """Each pending chunk's mass, chunks of one shape concatenated along the batch (the reference's layout)."""
    masses: list[torch.Tensor | None] = [None] * len(pending)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for order, (_, rows, key, scale, mask, _) in enumerate(pending):
        groups[(rows.shape[1:], key.shape[1:], scale, None if mask is None else mask.shape[1:])].append(order)
    for members in groups.values():
        rows = torch.cat([pending[i][1] for i in members])
        key = torch.cat([pending[i][2] for i in members])
        mask = pending[members[0]][4]
        if mask is not None:
            mask = torch.cat([pending[i][4].expand(pending[i][1].shape[0], *mask.shape[1:]) for i in members])
        parts = attention_mass(rows, key, pending[members[0]][3], mask).split([pending[i][1].shape[0] for i in members])
        for i, part in zip(members, parts):
            masses[i] = part
    return masses


def _packed_masses(pending: list[tuple]) -> list[torch.Tensor]:
    """Each chunk's mass (a separate call's, or one of a packed call's ``cu_seqlens`` chunks), in order, from one
    kernel call per batch layout: the chunks are packed along the sequence, told apart by segment ids."""
    masses: list[list[torch.Tensor]] = [[] for _ in pending]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for order, (_, rows, key, scale, mask, _) in enumerate(pending):
        if mask is not None:  # a dense mask of its own: alone
            masses[order] = [attention_mass(rows, key, scale, mask)]
        else:
            groups[(rows.shape[0], rows.shape[1], key.shape[1], rows.shape[3], rows.dtype, scale)].append(order)
    for members in groups.values():
        query_lengths, key_lengths, counts = [], [], []
        for i in members:
            _, rows, key, _, _, cu_seqlens = pending[i]
            chunks = [rows.shape[2]] if cu_seqlens is None else cu_seqlens.diff().tolist()
            query_lengths += chunks
            key_lengths += [key.shape[2]] if cu_seqlens is None else chunks
            counts.append(len(chunks))
        rows = _cat([pending[i][1] for i in members], dim=2)
        key = _cat([pending[i][2] for i in members], dim=2)
        scale = pending[members[0]][3]
        if len(query_lengths) == 1:
            parts = [attention_mass(rows, key, scale)]
        else:
            query_segments = _segment_ids(query_lengths, rows.device)
            key_segments = _segment_ids(key_lengths, rows.device)
            summed = attention_mass(
                rows, key, scale, query_segments=query_segments, key_segments=key_segments, reduce="sum"
            )
            # each chunk's mean over its own queries, as a call of that chunk alone gives
            queries = torch.tensor(query_lengths, device=rows.device).clamp(min=1)
            parts = list((summed / queries[key_segments]).split(key_lengths, dim=-1))
        chunks = iter(parts)
        for i, count in zip(members, counts):
            masses[i] = [next(chunks) for _ in range(count)]
    return [mass for chunks in masses for mass in chunks]


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _segment_ids(lengths: list[int], device: torch.device) -> torch.Tensor:
    """``[1, sum(lengths)]``: chunk ``i``'s ``lengths[i]`` elements get id ``i``."""
    ids = torch.arange(len(lengths), device=device)
    return ids.repeat_interleave(torch.tensor(lengths, device=device), output_size=sum(lengths))[None]


def _segments(rows, key, mask, cu_seqlens):
    """The packed sequences (``cu_seqlens``, flash attention's layout) of one vision attention call."""
    if cu_seqlens is None:
        return [(rows, key, mask)]
    bounds = cu_seqlens.tolist()
    return [(rows[:, :, a:b], key[:, :, a:b], None) for a, b in zip(bounds[:-1], bounds[1:])]
