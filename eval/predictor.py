"""A Hugging Face model and its processor as a ``runner.Predictor``: frames and prompt in, answer text out.

The processor's own chat template lays out the prompt. A video sample's frames go in as one video where the
model takes videos: through the processor's video processor, or, for a Qwen2.5-VL processor without one
(transformers builds Qwen video processors only with torchvision), patchified by ``processing.encode`` after
resizing the frames to the processor's fixed frame size. Otherwise, and for pictures, each frame is one image.
A batch mixing the two kinds runs as one ``generate`` per kind. Decoding is greedy. The efficiency figures are
per ``generate`` call and shared by its samples: ``prefill_ms`` is the prompt pass (the first forward of
``generate``, vision encoder included), ``first_token_ms`` the time from calling ``generate`` to the end of
that pass. ``load`` opens a checkpoint directory as ``fixtures.load`` does.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import Qwen2_5_VLProcessor

import vlmzip
from vlmzip.eval import processing
from vlmzip.eval.bench import synchronize
from vlmzip.eval.runner import Prediction
from vlmzip.eval.samples import Sample


def load(path: str | Path, dtype: torch.dtype, device: str) -> tuple[nn.Module, Any]:
    """Model (in eval mode) and processor from a checkpoint directory, offline. A Qwen2.5-VL processor is loaded
    without its video processor when torchvision is missing (``AutoProcessor`` fails then), as ``fixtures.load``
    does; the predictor then patchifies videos itself."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=device, local_files_only=True)
    return model.eval(), processing.load_processor(path, model.config.model_type)


class ModelPredictor:
    def __init__(self, model: nn.Module, processor: Any, max_new_tokens: int = 16) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.patchifies_videos = _patchifies_videos(processor)
        self.as_video = getattr(processor, "video_processor", None) is not None or self.patchifies_videos
        self._policy: str | None = None
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # generation appends on the right

    @torch.no_grad()
    def predict(self, policy: str, samples: list[Sample]) -> list[Prediction]:
        if policy != self._policy:
            vlmzip.compress(self.model, policy)
            self._policy = policy
        kinds = [self._kind(sample) for sample in samples]
        answers: dict[int, Prediction] = {}
        for kind in dict.fromkeys(kinds):  # one generate per kind, in order of first appearance
            group = [i for i, k in enumerate(kinds) if k == kind]
            for i, prediction in zip(group, self._generate([samples[i] for i in group], *kind), strict=True):
                answers[i] = prediction
        return [answers[i] for i in range(len(samples))]

    def _kind(self, sample: Sample) -> tuple[bool, float | None]:
        """(as a video?, the frame rate a video processor must be told): a video processor takes one rate per
        call, and Qwen's temporal positions follow it, so videos sampled at different rates go separately."""
        video = self.as_video and sample.medium == "video"
        return video, round(_frame_rate(sample), 6) if video and not self.patchifies_videos else None

    def _generate(self, samples: list[Sample], as_video: bool, fps: float | None = None) -> list[Prediction]:
        inputs = self._inputs(samples, as_video, fps)
        timing = _FirstPass(self.model)
        with timing:
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        responses = self.processor.batch_decode(new, skip_special_tokens=True)
        stats = vlmzip.stats(self.model)
        kept = next(reversed(stats.visual_tokens_kept.values()), stats.visual_tokens_in)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        entries = [sum(layer[i] for layer in stats.kv_entries if layer) for i in range(len(samples))]
        per_entry = _entry_bytes(self.model)
        return [
            Prediction(response.strip(), seen, left, timing.pass_ms, timing.first_token_ms, peak, n * per_entry)
            for response, seen, left, n in zip(responses, stats.visual_tokens_in, kept, entries, strict=True)
        ]

    def _inputs(self, samples: list[Sample], as_video: bool, fps: float | None = None) -> dict[str, torch.Tensor]:
        visual = {"type": "video"} if as_video else {"type": "image"}
        texts = []
        for sample in samples:
            parts = [visual] if as_video else [visual] * len(sample.frames)
            conversation = [{"role": "user", "content": [*parts, {"type": "text", "text": sample.prompt}]}]
            texts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
        if as_video and self.patchifies_videos:
            clips = [_clip(self.processor, sample.frames) for sample in samples]
            batch = processing.encode(self.processor, texts, videos=clips, fps=[_frame_rate(s) for s in samples])
        else:
            media = [[Image.fromarray(frame) for frame in sample.frames] for sample in samples]
            visual = {"videos": media, "fps": fps} if as_video else {"images": media}
            batch = self.processor(text=texts, **visual, return_tensors="pt", padding=True)
        return batch.to(self.model.device)


def _patchifies_videos(processor: Any) -> bool:
    """Whether ``processing.encode`` patchifies this processor's videos: a Qwen2.5-VL processor without a video
    processor whose pixel budget is one square size (min = max pixels, as the fixtures' are), which fixes the
    side frames are resized to. A Qwen2.5-VL processor with neither gets a warning: its frames go in as images."""
    if getattr(processor, "video_processor", None) is not None or not isinstance(processor, Qwen2_5_VLProcessor):
        return False
    size = processor.image_processor.size
    pixels = size.get("longest_edge")
    side = processing.image_side(processor) if pixels else 0
    if not pixels or size.get("shortest_edge") != pixels or side * side != pixels:
        warnings.warn(
            "this Qwen2.5-VL processor has no video processor (transformers needs torchvision for one) and no "
            "fixed frame size to patchify videos at: video frames go in as separate images; install torchvision "
            "to give them as videos",
            stacklevel=3,
        )
        return False
    return True


def _entry_bytes(model: nn.Module) -> int:
    """Bytes one cached token takes in one layer: a key and a value over the KV heads."""
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_key_value_heads * head_dim * model.dtype.itemsize


def _frame_rate(sample: Sample) -> float:
    """Frames a second among the sampled frames (their timestamps span ``len - 1`` intervals); 2 for one frame."""
    times = sample.timestamps
    if len(times) < 2 or times[-1] <= times[0]:
        return 2.0
    return (len(times) - 1) / (times[-1] - times[0])


def _clip(processor: Any, frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` from one video's RGB frames. ``processing.encode`` resizes a clip as the processor
    would; frames of different sizes (which cannot be stacked) are resized here, one by one, the same way."""
    tensors = [torch.from_numpy(frame).permute(2, 0, 1)[None] for frame in frames]
    if len({tensor.shape for tensor in tensors}) > 1:
        tensors = [processing.resized_for(processor, tensor) for tensor in tensors]
    return torch.cat(tensors).contiguous()


class _FirstPass:
    """Times the first forward of a ``generate`` call (the prompt pass) and the wait until it ends."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pass_ms = self.first_token_ms = None

    def __enter__(self) -> _FirstPass:
        synchronize()
        self._called = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._handles = [
            self.model.register_forward_pre_hook(self._begin),
            self.model.register_forward_hook(self._end),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _begin(self, *_: object) -> None:
        if self.pass_ms is None:
            synchronize()
            self._started = time.perf_counter()

    def _end(self, *_: object) -> None:
        if self.pass_ms is None:
            synchronize()
            now = time.perf_counter()
            self.pass_ms, self.first_token_ms = (now - self._started) * 1e3, (now - self._called) * 1e3
