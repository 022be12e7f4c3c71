"""Speed and memory of a compressed model against the unwrapped one, measured in the same process.

Real-size architectures are built from bundled configs with random weights (speed does not depend on the
weights). ``python -m vlmzip.eval.speed --arch llava-1.5-7b --batch 1 --policy vtc-cls:keep=64`` prints a
table; ``vlmzip bench`` will wrap this module.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig, LlavaConfig

import vlmzip


def llava_15_7b() -> LlavaConfig:
    """LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 patches, feature layer -2) and Vicuna-7B (Llama-2-7B)."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


UNWRAPPED = "(unwrapped)"
ARCHS: dict[str, Callable[[], LlavaConfig]] = {"llava-1.5-7b": llava_15_7b}


def build(arch: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(ARCHS[arch](), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def llava_inputs(model, batch: int, text_tokens: int = 40, device: str = "cuda") -> dict[str, torch.Tensor]:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(100, 30000, (batch, text_tokens), generator=generator)
    image = torch.full((batch, config.image_seq_length), config.image_token_id)
    ids = torch.cat([text[:, :5], image, text[:, 5:]], dim=1)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": pixels.to(device, model.dtype),
    }


@dataclass
class Timing:
    policy: str
    prefill_ms: float
    prefill_spread_ms: float
    first_token_ms: float  # generate(max_new_tokens=1): vision, prompt pass and generate's own set-up
    decode_tokens_per_s: float
    peak_gib: float
    kv_bytes: int


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), max(times) - min(times)


@torch.no_grad()
def measure(model, inputs, policy: str, new_tokens: int = 32, repeats: int = 5) -> Timing:
    if policy != UNWRAPPED:
        vlmzip.compress(model, policy)

    def prefill():
        return model(**inputs, use_cache=True)

    def generate(tokens: int):
        return lambda: model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    prefill(), generate(new_tokens)()  # warm-up
    torch.cuda.reset_peak_memory_stats()
    prefill_ms, spread = _median_ms(prefill, repeats)
    first_ms, _ = _median_ms(generate(1), repeats)
    generate_ms, _ = _median_ms(generate(new_tokens), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    kv_bytes = vlmzip.stats(model).kv_bytes if policy != UNWRAPPED else 0
    vlmzip.restore(model)
    # a decode step's cost: generate(n) - generate(1) removes the prompt pass and generate's set-up
    decode_s = max(generate_ms - first_ms, 1e-3) / 1e3
    tokens_per_s = (new_tokens - 1) * inputs["input_ids"].shape[0] / decode_s
    return Timing(policy, prefill_ms, spread, first_ms, tokens_per_s, peak, kv_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="llava-1.5-7b", choices=list(ARCHS))
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = build(args.arch)
    print(
        f"{'batch':>5} {'policy':<36} {'prefill ms':>11} {'ratio':>6} {'TTFT ms':>8} {'decode tok/s':>12} "
        f"{'peak GiB':>8} {'KV MiB':>8}"
    )
    for batch in args.batch or [1]:
        inputs = llava_inputs(model, batch)
        baseline = None
        for policy in [UNWRAPPED, "none", *args.policy]:
            t = measure(model, inputs, policy, args.new_tokens, args.repeats)
            baseline = baseline or t.prefill_ms
            print(
                f"{batch:>5} {policy:<36} {t.prefill_ms:>8.1f}±{t.prefill_spread_ms:<4.1f} "
                f"{baseline / t.prefill_ms:>5.2f}x {t.first_token_ms:>8.1f} {t.decode_tokens_per_s:>12.0f} "
                f"{t.peak_gib:>8.1f} {t.kv_bytes / 2**20:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
