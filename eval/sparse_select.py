"""Selection cost of the sparse-prefill methods against dense attention, one layer on random inputs.

``python -m vlmzip.eval.sparse_select --length 8192 --length 32768 --length 131072`` times, for each method, its
``choose`` (the block selection a prompt-pass layer runs before the kernel) and the blocks it picked, beside causal
SDPA on the same ``query [1, heads, S, d]`` and ``key [1, kv_heads, S, d]`` (Qwen2.5-VL-7B's 28 and 4 heads of 128 by
default, bf16). The issue's bar: selection at most 5% of dense attention time. Random queries and keys give flat
attention, so the densities printed are those of an uninformative prompt, not of a real one. BlindSight selects from
the prompt's layout alone and is not timed here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import vlmzip
from vlmzip.sparse import Layout, block_density, candidate_blocks, forced_blocks
from vlmzip.stages import SparseAttention

POLICIES = ("minference", "flexprefill", "xattention")


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(policy: str, length: int, heads: int, kv_heads: int, dim: int, device: str, dtype, repeats: int) -> dict:
    """Selection and SDPA times (ms) and the density chosen, for ``policy`` (a sparse prefill method) at ``length``."""
    method = vlmzip.Policy.parse(policy).prefill
    if not isinstance(method, SparseAttention):
        raise vlmzip.PolicyError(f"{policy!r} is not a sparse-prefill method")
    dev = torch.device(device)
    generator = torch.Generator(device=dev).manual_seed(0)
    query = torch.randn(1, heads, length, dim, device=dev, dtype=dtype, generator=generator)
    key = torch.randn(1, kv_heads, length, dim, device=dev, dtype=dtype, generator=generator)
    layout = Layout(torch.zeros(1, dtype=torch.long, device=dev), torch.tensor([length], device=dev), None, None)
    candidates = candidate_blocks(layout, length, method.block)
    scale = dim**-0.5

    def choose() -> torch.Tensor:
        return method.choose(None, query, key, layout, candidates, scale)

    chosen = (choose() | forced_blocks(candidates)) & candidates
    density = float(block_density(chosen.expand(-1, heads, -1, -1), candidates)[0])
    select_ms = _time(choose, repeats, dev)
    sdpa_ms = _time(
        lambda: F.scaled_dot_product_attention(query, key, key, is_causal=True, enable_gqa=True), repeats, dev
    )
    return {"policy": str(method), "length": length, "select_ms": select_ms, "sdpa_ms": sdpa_ms, "density": density}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", action="append", help=f"repeatable; default {', '.join(POLICIES)}")
    parser.add_argument("--length", type=int, action="append", help="repeatable; default 8192, 32768, 131072")
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{'policy':<60} {'length':>7} {'select ms':>10} {'sdpa ms':>9} {'select/sdpa':>11} {'density':>8}")
    for length in args.length or [8192, 32768, 131072]:
        for policy in args.policy or POLICIES:
            row = measure(
                policy,
                length,
                args.heads,
                args.kv_heads,
                args.dim,
                args.device,
                getattr(torch, args.dtype),
                args.repeats,
            )
            share = row["select_ms"] / row["sdpa_ms"]
            print(
                f"{row['policy']:<60} {length:>7} {row['select_ms']:>10.2f} {row['sdpa_ms']:>9.2f} {share:>11.1%} "
                f"{row['density']:>8.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
