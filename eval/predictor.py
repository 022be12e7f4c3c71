"""A Hugging Face model and its processor as a ``runner.Predictor``: frames and prompt in, answer text out.

The processor's own chat template lays out the prompt; frames go in as one video where the processor has
a video processor (Qwen-VL), otherwise as one image each. Decoding is greedy. The efficiency figures are
per batch and shared by its samples: ``prefill_ms`` is the prompt pass (the first forward of ``generate``,
vision encoder included), ``first_token_ms`` the time from calling ``generate`` to the end of that pass.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image
from torch import nn

import vlmzip
from vlmzip.eval.bench import synchronize
from vlmzip.eval.runner import Prediction
from vlmzip.eval.videomme import Sample


class ModelPredictor:
    def __init__(self, model: nn.Module, processor: Any, max_new_tokens: int = 16) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.as_video = getattr(processor, "video_processor", None) is not None
        self._policy: str | None = None
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # generation appends on the right

    @torch.no_grad()
    def predict(self, policy: str, samples: list[Sample]) -> list[Prediction]:
        if policy != self._policy:
            vlmzip.compress(self.model, policy)
            self._policy = policy
        inputs = self._inputs(samples)
        timing = _FirstPass(self.model)
        with timing:
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        responses = self.processor.batch_decode(new, skip_special_tokens=True)
        stats = vlmzip.stats(self.model)
        kept = next(reversed(stats.visual_tokens_kept.values()), stats.visual_tokens_in)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return [
            Prediction(response.strip(), seen, left, timing.pass_ms, timing.first_token_ms, peak)
            for response, seen, left in zip(responses, stats.visual_tokens_in, kept, strict=True)
        ]

    def _inputs(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        visual = {"type": "video"} if self.as_video else {"type": "image"}
        texts, media = [], []
        for sample in samples:
            frames = [Image.fromarray(frame) for frame in sample.frames]
            parts = [visual] if self.as_video else [visual] * len(frames)
            conversation = [{"role": "user", "content": [*parts, {"type": "text", "text": sample.prompt}]}]
            texts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
            media.append(frames)
        key = "videos" if self.as_video else "images"
        batch = self.processor(text=texts, **{key: media}, return_tensors="pt", padding=True)
        return batch.to(self.model.device)


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
