"""``vlmzip bench``: speed and memory of compressed models against the unwrapped model, in one process.

Real-size architectures are built from bundled configs with random weights (speed does not depend on the
weights), with a word-level tokenizer of their vocabulary (``vlmzip.eval.clip``: methods that read the question's
text need one); ``--model PATH`` loads a checkpoint offline instead. For every batch size the unwrapped model is
measured first, then ``none`` (vlmzip installed with nothing to do: the hooks' own cost), then each policy,
all on the same inputs. Times are medians over ``--repeats`` after a warm-up, with the spread (max - min).

Time to first token is split where it goes: the vision encoder (every forward of the vision tower), the
language model's prompt pass, and its first decode step (hooks on those modules, synchronised). Every row also
gives the equivalent visual tokens per sample its language model processed (the mean over its layers, as
``vlmzip.Stats.visual_tokens_by_layer`` counts them), so a prefill method that keeps different counts at
different layers compares with a fixed budget.

``--ideal N`` adds the best any method keeping N visual tokens per sample could do, measured in the same run: the
unwrapped model's prompt pass with its language model fed the prompt's text and only the first N visual tokens of
each sample, under a plain causal mask (the vision tower still encodes every image). No vlmzip code runs in it:
a hook on the language model shortens its inputs. ``--ideal-at-eq`` adds, after each policy, the ideal at the
equivalent visual tokens it measured: the figure a prefill method's speed compares with.

Decode is reported twice: tokens per second of ``generate`` (wall time, host included: at small batches the host
bounds it), and, on CUDA, the **GPU time of one decode step**: the kernels' own time (the profiler's sum of every
kernel's duration) of ``generate(n)`` less ``generate(1)``, over ``n - 1`` steps. That is the step a host that
keeps up (CUDA graphs) would see, with the cache's own per-step work (appends, quantisation) included.
``--hf-cache BACKEND:BITS`` adds the unwrapped model generating with transformers' own ``QuantizedCache``
(``fp8``, ``quanto:2``, ``quanto:4``, ``hqq:4``; where its backend is installed), and every row counts its cache's
bytes after ``generate(n)``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PretrainedConfig

import vlmzip
from vlmzip.eval.clip import with_word_tokenizer
from vlmzip.eval.families import bench_archs
from vlmzip.eval.tiny import FAMILIES, random_inputs, tiny_model, visual_mask
from vlmzip.registry import adapter_for

UNWRAPPED = "(unwrapped)"


def ideal_label(tokens: int) -> str:
    return f"(ideal: {tokens} visual tokens)"


# Every family's real-size architectures (vlmzip.eval.families: their configs live there), by --arch name.
ARCHS: dict[str, Callable[[], PretrainedConfig]] = bench_archs()
TINY_ARCHS = {f"tiny-{family}": family for family in FAMILIES}  # for tests and CPU smoke runs


def build(
    arch: str | None = None, path: str | None = None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16
) -> nn.Module:
    """A real-size architecture with random weights (``arch``), or a checkpoint loaded offline (``path``)."""
    if path is not None:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=device, local_files_only=True)
    elif arch in TINY_ARCHS:
        model = with_word_tokenizer(tiny_model(TINY_ARCHS[arch]).to(device=device, dtype=dtype))
    elif arch in ARCHS:
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(ARCHS[arch](), dtype=dtype, attn_implementation="sdpa")
        with_word_tokenizer(model)  # for methods that read the question's text (a clip= relevance)
    else:
        known = ", ".join([*ARCHS, *TINY_ARCHS])
        raise vlmzip.VlmzipError(f"unknown architecture {arch!r}; known: {known} (or pass --model PATH)")
    return model.eval()


@dataclass
class Workload:
    """What each sample of a benchmark batch holds."""

    images: int = 1
    frames: int = 0  # video frames (Qwen families)
    frame_patches: int = 24  # Qwen images/frames: patches per side (24 = 336 px at patch 14)
    text_tokens: int = 40

    def inputs(self, model: nn.Module, batch: int) -> dict[str, torch.Tensor]:
        frames = [self.frames] * batch if self.frames else None
        inputs = random_inputs(
            model, [self.images] * batch, [self.text_tokens] * batch, frames, qwen_patches=self.frame_patches
        )
        return {
            key: value.to(model.device, model.dtype if value.is_floating_point() else value.dtype)
            for key, value in inputs.items()
        }


@dataclass
class Result:
    """One row. ``equivalent_visual_tokens``: per sample, the mean over the language model's layers of the visual
    tokens each processed in the prompt pass. An ideal row times the prompt pass only (no ``generate``): its
    time to first token, first decode step and decode speed are ``None``."""

    batch: int
    policy: str
    prefill_ms: float
    prefill_spread_ms: float
    first_token_ms: float | None
    vision_ms: float
    lm_prefill_ms: float
    first_decode_ms: float | None
    decode_tokens_per_s: float | None
    peak_gib: float
    kv_bytes: int
    visual_tokens_in: list[int] = field(default_factory=list)
    visual_tokens_kept: dict[str, list[int]] = field(default_factory=dict)
    equivalent_visual_tokens: float = 0.0
    decode_step_gpu_ms: float | None = None
    attention_density: float = 1.0  # sparse prefill: mean share of causal attention blocks computed (stats)


class _Phases:
    """Wall time of each forward of the vision tower and the language model, synchronised at the edges."""

    def __init__(self, model: nn.Module) -> None:
        adapter = adapter_for(model)
        self.modules = {"vision": adapter.vision_tower, "language": adapter.language_model}
        self.times: dict[str, list[float]] = {name: [] for name in self.modules}
        self._start: dict[str, float] = {}

    def __enter__(self) -> _Phases:
        self._handles = []
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda *_, n=name: self._begin(n)))
            self._handles.append(module.register_forward_hook(lambda *_, n=name: self._end(n)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _begin(self, name: str) -> None:
        synchronize()
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        synchronize()
        self.times[name].append((time.perf_counter() - self._start[name]) * 1e3)


def synchronize() -> None:
    """Wait for queued device work, so host clocks measure it (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), max(times) - min(times)


@torch.no_grad()
def measure(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    policy: str,
    new_tokens: int = 32,
    repeats: int = 5,
    hf_cache: str | None = None,
) -> Result:
    """Time one policy (or ``UNWRAPPED``; with ``hf_cache``, the unwrapped model on transformers' ``QuantizedCache``)
    on ``inputs``; the model is restored afterwards."""
    if policy != UNWRAPPED:
        vlmzip.compress(model, policy)
    try:

        def generate(tokens: int, **extra: Any) -> Callable[[], Any]:
            def run() -> Any:
                cache = {} if hf_cache is None else {"cache": quantized_cache(model, hf_cache)}
                return model.generate(
                    **inputs, **cache, **extra, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
                )

            return run

        generate(new_tokens)()  # warm-up
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        prefill_ms, spread = _timed(lambda: model(**inputs, use_cache=True), repeats)
        first_ms, _ = _timed(generate(1), repeats)
        all_ms, _ = _timed(generate(new_tokens), repeats)
        phases = [_phase_times(model, generate(2)) for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        step_gpu_ms = _decode_step_gpu_ms(generate, new_tokens)
        last = generate(new_tokens, return_dict_in_generate=True)()  # the cache every row's bytes are counted on
        stats = vlmzip.stats(model) if policy != UNWRAPPED else None
        kv_bytes = stats.kv_bytes if stats else cache_nbytes(last)
    finally:
        vlmzip.restore(model)
    batch = inputs["input_ids"].shape[0]
    visual = visual_mask(model, inputs).sum(dim=1).tolist()
    decode_s = max(all_ms - first_ms, 1e-6) / 1e3  # generate(n) - generate(1): the prompt pass cancels
    return Result(
        batch,
        policy if hf_cache is None else f"{UNWRAPPED} hf-cache {hf_cache}",
        prefill_ms,
        spread,
        first_ms,
        *(statistics.median(p[i] for p in phases) for i in range(3)),
        decode_tokens_per_s=(new_tokens - 1) * batch / decode_s,
        peak_gib=peak,
        kv_bytes=kv_bytes,
        visual_tokens_in=stats.visual_tokens_in if stats else visual,
        visual_tokens_kept=stats.visual_tokens_kept if stats else {},
        equivalent_visual_tokens=statistics.mean(stats.equivalent_visual_tokens() if stats else visual),
        decode_step_gpu_ms=step_gpu_ms,
        attention_density=statistics.mean(stats.mean_attention_density()) if stats else 1.0,
    )


def quantized_cache(model: nn.Module, spec: str) -> Any:
    """transformers' ``QuantizedCache`` for ``spec``: ``BACKEND`` or ``BACKEND:BITS`` (``fp8``, ``quanto:4``)."""
    from transformers.cache_utils import QuantizedCache

    backend, _, bits = spec.partition(":")
    return QuantizedCache(backend, model.config, **({"nbits": int(bits)} if bits else {}))


def cache_nbytes(output: Any) -> int:
    """Bytes of every tensor a ``generate`` output's cache holds (tensor subclasses, e.g. quanto's, by their parts)."""
    seen: set[int] = set()

    def count(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return 0
            seen.add(id(value))
            if type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
                names, _ = value.__tensor_flatten__()
                return sum(count(getattr(value, name)) for name in names)
            return value.nbytes
        if isinstance(value, (tuple, list)):
            return sum(count(item) for item in value)
        return 0

    cache = getattr(output, "cache", None)
    return sum(count(value) for layer in getattr(cache, "layers", []) for value in vars(layer).values())


def _decode_step_gpu_ms(generate: Callable[..., Callable[[], Any]], new_tokens: int) -> float | None:
    """The kernels' time of one decode step (``generate(n)`` less ``generate(1)``, per step); ``None`` off CUDA."""
    if not torch.cuda.is_available() or new_tokens < 2:
        return None
    return (_kernel_ms(generate(new_tokens)) - _kernel_ms(generate(1))) / (new_tokens - 1)


def _kernel_ms(run: Callable[[], Any]) -> float:
    """The summed duration of every CUDA kernel ``run`` launches (the GPU's busy time, host gaps excluded)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        synchronize()
    kernels = [event for event in prof.events() if event.device_type == DeviceType.CUDA]
    return sum(event.device_time for event in kernels) / 1e3


def shortened_positions(visual: torch.Tensor, tokens: int) -> torch.Tensor:
    """``[B, L']``: the positions an ideal prompt of ``tokens`` visual tokens per sample keeps: every text token
    and each sample's first ``tokens`` visual ones (which ones does not matter to speed)."""
    counts = visual.sum(dim=1)
    if not 0 <= tokens <= int(counts.min()):
        raise vlmzip.VlmzipError(f"--ideal {tokens}: the samples have {int(counts.min())} visual tokens each")
    keep = ~visual | (visual.cumsum(dim=1) <= tokens)
    return keep.nonzero()[:, 1].view(visual.shape[0], -1)  # every sample keeps as many: rows of one length


class _Shortened:
    """Feeds the language model the kept positions of the prompt (its decode steps untouched), as if the prompt
    had been that short: a plain causal mask of the new length, positions counted from 0."""

    def __init__(self, model: nn.Module, positions: torch.Tensor, length: int) -> None:
        self.module, self.positions, self.length = adapter_for(model).language_model, positions, length

    def __enter__(self) -> _Shortened:
        # prepended: the shortening happens before the timing hooks of _Phases start the language model's clock
        self._handle = self.module.register_forward_pre_hook(self._shorten, with_kwargs=True, prepend=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _shorten(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[1] != self.length:
            return None
        index = self.positions.to(embeds.device)[..., None].expand(-1, -1, embeds.shape[-1])
        kwargs = {key: value for key, value in kwargs.items() if key not in ("position_ids", "cache_position")}
        kwargs["inputs_embeds"] = embeds.gather(1, index)
        kwargs["attention_mask"] = torch.ones(index.shape[:2], dtype=torch.long, device=embeds.device)
        return args, kwargs


@torch.no_grad()
def measure_ideal(model: nn.Module, inputs: dict[str, torch.Tensor], tokens: int, repeats: int = 5) -> Result:
    """The unwrapped model's prompt pass with its language model fed ``tokens`` visual tokens per sample."""
    input_ids = inputs["input_ids"]
    visual = visual_mask(model, inputs)
    positions = shortened_positions(visual, tokens)

    def forward() -> Any:
        return model(**inputs, use_cache=True)

    with _Shortened(model, positions, input_ids.shape[1]):
        forward()  # warm-up
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        prefill_ms, spread = _timed(forward, repeats)
        phases = [_phase_times(model, forward) for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return Result(
        batch=input_ids.shape[0],
        policy=ideal_label(tokens),
        prefill_ms=prefill_ms,
        prefill_spread_ms=spread,
        first_token_ms=None,
        vision_ms=statistics.median(p[0] for p in phases),
        lm_prefill_ms=statistics.median(p[1] for p in phases),
        first_decode_ms=None,
        decode_tokens_per_s=None,
        peak_gib=peak,
        kv_bytes=0,
        visual_tokens_in=visual.sum(dim=1).tolist(),
        visual_tokens_kept={"ideal": [tokens] * input_ids.shape[0]},
        equivalent_visual_tokens=float(tokens),
    )


def _phase_times(model: nn.Module, run: Callable[[], Any]) -> tuple[float, float, float]:
    with _Phases(model) as phases:
        run()
    language = phases.times["language"]
    return sum(phases.times["vision"]), language[0], language[1] if len(language) > 1 else 0.0


def run(
    model: nn.Module,
    policies: list[str],
    batches: list[int],
    workload: Workload,
    new_tokens: int,
    repeats: int,
    report: Callable[[Result], None] = lambda result: None,
    ideal: Sequence[int] = (),
    ideal_at_equivalent: bool = False,
    hf_caches: Sequence[str] = (),
) -> list[Result]:
    """Per batch size: the unwrapped model, then on each of ``hf_caches`` (transformers' ``QuantizedCache``), the
    ideal of each ``ideal`` token count, ``none``, then ``policies``; with ``ideal_at_equivalent``, each policy that
    processed fewer visual tokens than it was given is followed by the ideal at its equivalent tokens (rounded),
    unless that one was measured already."""
    results = []
    for batch in batches:
        inputs = workload.inputs(model, batch)
        done: set[int] = set()

        def add(result: Result) -> None:
            results.append(result)
            report(result)

        add(measure(model, inputs, UNWRAPPED, new_tokens, repeats))
        for spec in hf_caches:
            add(measure(model, inputs, UNWRAPPED, new_tokens, repeats, hf_cache=spec))
        for tokens in ideal:
            add(measure_ideal(model, inputs, tokens, repeats))
            done.add(tokens)
        for policy in ["none", *policies]:
            add(measure(model, inputs, policy, new_tokens, repeats))
            tokens = round(results[-1].equivalent_visual_tokens)
            if ideal_at_equivalent and tokens < min(results[-1].visual_tokens_in) and tokens not in done:
                add(measure_ideal(model, inputs, tokens, repeats))
                done.add(tokens)
    return results


HEADER = (
    f"{'batch':>5} {'policy':<38} {'prefill ms':>13} {'speed-up':>8} {'TTFT ms':>8} {'vision':>7} "
    f"{'LM pre':>7} {'LM x':>6} {'1st dec':>7} {'tok/s':>7} {'GPU step':>8} {'peak GiB':>8} {'KV MiB':>8} {'eq vis':>7}"
)


def row(result: Result, baseline: Result) -> str:
    """A line of the table; ``speed-up`` and ``LM x`` (the language model's prompt pass alone) against
    ``baseline``, the unwrapped model on the same inputs."""
    speedup = baseline.prefill_ms / result.prefill_ms
    lm_speedup = baseline.lm_prefill_ms / result.lm_prefill_ms
    return (
        f"{result.batch:>5} {result.policy:<38} {result.prefill_ms:>8.1f}±{result.prefill_spread_ms:<4.1f} "
        f"{speedup:>7.2f}x {_ms(result.first_token_ms, 8)} {result.vision_ms:>7.1f} {result.lm_prefill_ms:>7.1f} "
        f"{lm_speedup:>5.2f}x {_ms(result.first_decode_ms, 7)} {_ms(result.decode_tokens_per_s, 7, '.0f')} "
        f"{_ms(result.decode_step_gpu_ms, 8, '.2f')} "
        f"{result.peak_gib:>8.1f} {result.kv_bytes / 2**20:>8.1f} {result.equivalent_visual_tokens:>7.1f}"
    )


def _ms(value: float | None, width: int, spec: str = ".1f") -> str:
    return f"{'–':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}{spec}}"


def main(args: argparse.Namespace) -> int:
    for policy in args.policy:
        vlmzip.Policy.parse(policy)  # fail before building a 7B model
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = build(None if args.model else args.arch, args.model, device, getattr(torch, args.dtype))
    patch = getattr(model.config.vision_config, "patch_size", 14)
    workload = Workload(args.images, args.frames, args.frame_size // patch, args.text_tokens)
    print(HEADER, flush=True)
    baselines: dict[int, Result] = {}

    def report(result: Result) -> None:
        baseline = baselines.setdefault(result.batch, result)
        print(row(result, baseline), flush=True)

    batches = args.batch_size or [1]
    results = run(
        model,
        args.policy,
        batches,
        workload,
        args.new_tokens,
        args.repeats,
        report,
        args.ideal or (),
        args.ideal_at_eq,
        args.hf_cache or (),
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        config = {key: str(value) for key, value in vars(args).items() if key != "run"}
        payload = {"config": config, "versions": versions(), "results": [asdict(r) for r in results]}
        (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    return 0


def versions() -> dict[str, str]:
    """vlmzip, torch and transformers versions and the device, recorded in result files."""
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "vlmzip": vlmzip.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
