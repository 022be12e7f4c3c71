"""Kernels against their references on a CUDA GPU: ``python -m vlmzip.kernels.bench [mass|tower|decode]``.

``decode`` (``decode_bench``): one decode step of one Qwen2.5-VL-7B-like layer (Hq=28, Hkv=4, d=128, bf16) over
a 16,384-token context at batch 1 and 8, as ``kernels.decode_attention`` reads a KIVI cache (``--bits``, default
2; groups of 32; a 128-token bf16 window) against bf16 SDPA over the same context. Prints median ms, the bytes
each path must read (the floor: 6.5 MB against 33.6 MB at batch 1; ``decode_attention``'s docstring counts them),
the bandwidth that implies, and the max abs difference from SDPA over the dequantised cache.

``tower`` (``tower_bench``): one Qwen2.5-VL-7B-like vision attention layer on a 64-frame video (336x336 frames ->
24x24 patches, 16 heads, head dim 80, bf16; windows of 112 px = 8x8 patches, so 9 windows of 64 a frame), run as
the model runs it for ``sdpa`` (one SDPA call per window: 576 calls) against ``kernels.chunk_attention``'s batched
strategies (``grouped``: one call per window length; ``padded``: one call, padding keys masked), for the windowed
layer, a full-attention layer (64 frames of 576) and a grid that leaves edge windows (28x28 patches: windows of 64,
32 and 16). Prints median ms, the speed-up over the loop, the max abs difference and whether the bits match; its
result sets ``chunk_attention.DEFAULT_STRATEGY``.

``mass`` (the default):

Prints each case's median time, extra peak memory (beyond the inputs), max abs difference, and whether two kernel
runs agree bit for bit. Work per case, counted before measuring (bf16; QK^T is computed in both passes, the
exponentials too; H200: 4.8 TB/s, 989 dense bf16 TFLOP/s, ~4.2e12 exp2/s on the SFUs):

* LLaVA LM, last token: B=32, H=32, Q=1, K=616, d=128, per query. 0.16 GFLOP a pass; the keys are 161 MB and
  each pass reads them once: 323 MB, a floor of **~0.07 ms** (memory). The reference first copies the keys to
  fp32 (0.5 GB written and read again): ~0.2 ms.
* LLaVA LM, 40 text rows: as above with Q=40: 6.5 GFLOP a pass (13 us of tensor cores), still **~0.07 ms** of
  key reads; output 3.2 MB.
* SigLIP, all rows: B=32, H=16, Q=K=4096, d=72, mean over queries. 1.24 TFLOP a pass, 2.5 TFLOP in all
  (4.4 executed: d pads to 128), 8.6e9 exponentials a pass (17.2e9: **~4.1 ms** of SFU time) plus ~10 fp32
  operations per logit on the CUDA cores (~4 ms): a floor of **~4-5 ms**, compute-bound. The reference holds
  two or three fp32 [32, 16, 1024, 4096] tensors at once (8.6 GB each) and moves ~200 GB: tens of ms.
* Qwen ViT window layer: 64 frames x 16 windows of 64 patches packed into one sequence of 65,536 (segment ids),
  H=16, d=80. 10.7 GFLOP and 67M exponentials a pass (~0.03 ms each in all); q and k are 168 MB each, read
  once a pass: **~0.14 ms**, memory-bound. The reference runs the 1024 windows as a batch (the CPU path).
* Qwen ViT full layer: the same frames, attending within each frame (1024 patches): 172 GFLOP and 1.1e9
  exponentials a pass: **~0.5 ms** (SFU-bound). Reference: the 64 frames as a batch, 4.3 GB of logits.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from vlmzip.kernels.attention_mass import attention_mass_reference, attention_mass_triton
from vlmzip.kernels.chunk_attention import STRATEGIES, chunk_attention, chunk_attention_loop, chunk_plan
from vlmzip.kernels.decode_attention import decode_attention
from vlmzip.kernels.kv_quant import dequantize, quantize


def _case(batch, heads, kv_heads, n_q, n_k, dim, **args):
    query = torch.randn(batch, heads, n_q, dim, device="cuda", dtype=torch.bfloat16)
    key = torch.randn(batch, kv_heads, n_k, dim, device="cuda", dtype=torch.bfloat16)
    return query, key, {"scaling": dim**-0.5, **args}


def _packed(frames: int, chunk: int, heads: int, dim: int):
    """The same tokens twice: packed with segment ids (kernel) and as a batch of chunks (reference)."""
    query, key, args = _case(frames, heads, heads, chunk, chunk, dim)
    ids = torch.arange(frames, device="cuda").repeat_interleave(chunk)[None]
    packed = [t.transpose(0, 1).reshape(1, heads, frames * chunk, dim) for t in (query, key)]
    kernel_args = {**args, "query_segments": ids, "key_segments": ids, "reduce": "sum"}
    # the kernel's per-key sums over a chunk's queries, as the reference's per-chunk means
    return (*packed, kernel_args), (query, key, args), lambda out: out.view(frames, chunk) / chunk


def _same(inputs):
    return inputs, inputs, lambda out: out


def _cases():
    last = torch.full((32, 1), 615, device="cuda")
    text = torch.arange(576, 616, device="cuda").expand(32, 40)
    yield "LLaVA LM, last token", _same(_case(32, 32, 32, 1, 616, 128, query_positions=last, per_query=True))
    yield "LLaVA LM, 40 text rows", _same(_case(32, 32, 32, 40, 616, 128, query_positions=text, per_query=True))
    yield "SigLIP, all rows", _same(_case(32, 16, 16, 4096, 4096, 72))
    yield "Qwen ViT, 64x16 windows of 64", _packed(64 * 16, 64, 16, 80)
    yield "Qwen ViT, 64 frames of 1024", _packed(64, 1024, 16, 80)


def _measure(function, query, key, args, repeats: int = 10) -> tuple[torch.Tensor, float, float]:
    """Output, median milliseconds and extra peak MiB of ``function``."""
    out = function(query, key, **args)  # compiles the kernel on the first call
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function(query, key, **args)
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out, sorted(times)[len(times) // 2], peak


def mass_bench() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark times CUDA kernels: no CUDA device here")
    torch.manual_seed(0)
    print(f"{'case':32} {'kernel ms':>10} {'ref ms':>9} {'speed-up':>8} {'kernel MiB':>11} {'ref MiB':>9} "
          f"{'max |diff|':>11} {'same bits':>9}")  # fmt: skip
    for name, ((q, k, kernel_args), (rq, rk, ref_args), as_reference) in _cases():
        out, kernel_ms, kernel_mib = _measure(attention_mass_triton, q, k, kernel_args)
        again = attention_mass_triton(q, k, **kernel_args)
        expected, ref_ms, ref_mib = _measure(attention_mass_reference, rq, rk, ref_args, repeats=3)
        error = (as_reference(out) - expected.view_as(as_reference(out))).abs().max().item()
        print(f"{name:32} {kernel_ms:10.3f} {ref_ms:9.3f} {ref_ms / kernel_ms:7.1f}x {kernel_mib:11.1f} "
              f"{ref_mib:9.1f} {error:11.2e} {str(torch.equal(out, again)):>9}")  # fmt: skip
        del out, again, expected
        torch.cuda.empty_cache()


def _window_lengths(side: int, window: int) -> list[int]:
    """Patches per window of one ``side`` x ``side`` frame cut into ``window``-patch windows (edge ones smaller)."""
    edges = [min(window, side - start) for start in range(0, side, window)]
    return [rows * cols for rows in edges for cols in edges]


def _timed(function, repeats: int) -> tuple[torch.Tensor, float]:
    """Output and median milliseconds of ``function()`` (CUDA events on a GPU, wall clock elsewhere)."""
    out = function()  # warm-up
    cuda = out.is_cuda
    times = []
    for _ in range(repeats):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            begin = time.perf_counter()
            function()
            times.append((time.perf_counter() - begin) * 1e3)
    return out, sorted(times)[len(times) // 2]


def _graphed(function, repeats: int, calls: int = 20) -> float:
    """Median milliseconds of one ``function()`` replayed from a CUDA graph of ``calls`` calls: the GPU's time, without
    the host's launch overhead (what a decode loop under CUDA graphs pays)."""
    function()  # compiled and warm before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        function()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            function()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    return sorted(times)[len(times) // 2]


def _pruned_cases(frames: int, side: int, window: int, keep: float = 0.1) -> list[tuple[str, list[int]]]:
    """The layers after a choice that keeps ``keep`` of the 2x2 merge units at random: windows of 4 to
    ``window**2`` rows (empty ones gone) and frames of different lengths."""
    generator = torch.Generator().manual_seed(0)
    units = side // 2
    kept = torch.rand(frames, units, units, generator=generator) < keep
    per_window = kept.unflatten(1, (-1, window // 2)).unflatten(3, (-1, window // 2)).sum(dim=(2, 4)).flatten()
    windows = [4 * n for n in per_window.tolist() if n]
    return [
        (f"window, {keep:.0%} kept at random", windows),
        (f"full, {keep:.0%} kept at random", [4 * n for n in kept.sum(dim=(1, 2)).tolist() if n]),
    ]


def tower_bench(
    frames: int = 64,
    side: int = 24,
    heads: int = 16,
    dim: int = 80,
    window: int = 8,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
    edge_side: int | None = None,
) -> list[dict]:
    """Time one Qwen vision attention layer per-chunk (the model's ``sdpa`` path) against each batched strategy.

    Cases: the windowed layer (``frames`` frames of ``side`` x ``side`` patches in ``window``-patch windows), the
    full-attention layer (one chunk per frame), the windowed layer on ``edge_side`` patches a side (default
    ``side + window / 2``: edge windows of other lengths), and both kinds after a choice inside the tower that kept
    10% of the merge units at random (windows and frames of many lengths). The plan (one host read of the lengths)
    is built once outside the timing, as the runtime builds it once per forward for all layers of a kind. Returns
    one row per (case, path) and prints them.
    """
    edge_side = edge_side if edge_side is not None else side + window // 2
    cases = [
        (f"window, {frames} frames of {side}x{side}", _window_lengths(side, window) * frames),
        (f"full, {frames} frames of {side * side}", [side * side] * frames),
        (f"window, edges ({edge_side}x{edge_side})", _window_lengths(edge_side, window) * frames),
        *_pruned_cases(frames, side, window),
    ]
    generator = torch.Generator(device=device).manual_seed(0)
    scale = dim**-0.5

    def attend(q, k, v, mask):  # what transformers' sdpa_attention_forward calls, in its layout
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)

    rows = []
    print(f"{'case':34} {'path':8} {'calls':>6} {'ms':>9} {'speed-up':>8} {'max |diff|':>11} {'same bits':>9}")
    for name, lengths in cases:
        total = sum(lengths)
        # [S, H, D] as the tower's qkv projection makes them, seen as [1, H, S, D] as its attention passes them
        q, k, v = (
            torch.randn(total, heads, dim, device=device, dtype=dtype, generator=generator).transpose(0, 1)[None]
            for _ in range(3)
        )
        bounds = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
        plan = chunk_plan(bounds, total, max(lengths))
        expected, loop_ms = _timed(partial(chunk_attention_loop, q, k, v, bounds, attend), repeats)
        rows.append({"case": name, "path": "loop", "calls": len(lengths), "ms": loop_ms, "diff": 0.0, "same": True})
        for strategy in STRATEGIES:
            out, ms = _timed(partial(chunk_attention, q, k, v, plan, attend, strategy), repeats)
            calls = {"padded": 1, "bucketed": len(plan.buckets)}.get(strategy, len(plan.groups))
            diff = (out.float() - expected.float()).abs().max().item()
            rows.append({"case": name, "path": strategy, "calls": calls, "ms": ms, "diff": diff,
                         "same": torch.equal(out, expected)})  # fmt: skip
        for row in rows[-1 - len(STRATEGIES) :]:
            print(f"{row['case']:34} {row['path']:8} {row['calls']:6d} {row['ms']:9.3f} {loop_ms / row['ms']:7.1f}x "
                  f"{row['diff']:11.2e} {str(row['same']):>9}")  # fmt: skip
    return rows


def decode_bench(
    batch_sizes: tuple[int, ...] = (1, 8),
    context: int = 16384,
    window: int = 128,
    heads: int = 28,
    kv_heads: int = 4,
    dim: int = 128,
    bits: int = 2,
    group_size: int = 32,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
    graphs: bool = True,
) -> list[dict]:
    """Time one decode step over a packed cache (``decode_attention``: the Triton kernel on CUDA, the reference
    elsewhere) against SDPA over the same context in ``dtype``, per batch size, launched from Python (host overhead
    included) and, with ``graphs``, replayed from a CUDA graph (the GPU's time; each against SDPA timed the same
    way). The cache is KIVI's: the oldest whole groups of ``group_size`` tokens of the first ``context - window``
    quantised to ``bits`` (keys along tokens, values along channels), the rest kept in ``dtype``. Returns one row per
    (batch, path) and prints them.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    scale, sdpa = dim**-0.5, torch.nn.functional.scaled_dot_product_attention
    n_packed = (context - window) // group_size * group_size
    rows = []
    print(f"{'batch':>5} {'path':12} {'ms':>9} {'MB read':>9} {'GB/s':>8} {'speed-up':>8} {'max |diff|':>11}")
    for batch in batch_sizes:
        query, key, value = (
            torch.randn(batch, n_heads, length, dim, device=device, dtype=dtype, generator=generator)
            for n_heads, length in ((heads, 1), (kv_heads, context), (kv_heads, context))
        )
        packed_key = quantize(key[:, :, :n_packed], bits, group_size, "tokens")
        packed_value = quantize(value[:, :, :n_packed], bits, group_size, "channels")
        full_key, full_value = key[:, :, n_packed:], value[:, :, n_packed:]
        io = 2 * query.numel() * query.element_size()  # the query read, the output written
        window_bytes = 2 * full_key.numel() * full_key.element_size()
        packed_bytes = packed_key.nbytes().total + packed_value.nbytes().total + window_bytes + io
        dense_bytes = 2 * key.numel() * key.element_size() + io

        packed = partial(decode_attention, query, packed_key, packed_value, full_key, full_value, scale)
        dense = partial(sdpa, query, key, value, scale=scale, enable_gqa=True)
        out, packed_ms = _timed(packed, repeats)
        _, dense_ms = _timed(dense, repeats)
        dequantized = [torch.cat([dequantize(packed), full], dim=2)
                       for packed, full in ((packed_key, full_key), (packed_value, full_value))]  # fmt: skip
        expected = sdpa(query, *dequantized, scale=scale, enable_gqa=True)
        diff = (out.float() - expected.float()).abs().max().item()
        timings = [("packed", packed_ms, packed_bytes, diff, packed_ms), ("sdpa", dense_ms, dense_bytes, 0.0, dense_ms)]
        if graphs and query.is_cuda:  # CUDA graphs exist only there
            packed_graph, dense_graph = _graphed(packed, repeats), _graphed(dense, repeats)
            timings += [("packed/graph", packed_graph, packed_bytes, diff, dense_graph),
                        ("sdpa/graph", dense_graph, dense_bytes, 0.0, dense_graph)]  # fmt: skip
        for path, ms, read, error, baseline in timings:
            rows.append({"batch": batch, "path": path, "ms": ms, "bytes": read, "diff": error})
            print(f"{batch:5d} {path:12} {ms:9.3f} {read / 1e6:9.2f} {read / ms / 1e6:8.1f} "
                  f"{baseline / ms:7.2f}x {error:11.2e}")  # fmt: skip
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("mass", "tower", "decode"), default="mass")
    parser.add_argument("--frames", type=int, default=64, help="tower: video frames (default 64)")
    parser.add_argument("--bits", type=int, choices=(2, 4, 8), default=2, help="decode: bits of the cache (default 2)")
    parser.add_argument("--context", type=int, default=16384, help="decode: tokens in the cache (default 16384)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark times CUDA kernels: no CUDA device here")
    if args.what == "mass":
        mass_bench()
    elif args.what == "tower":
        tower_bench(frames=args.frames)
    else:
        decode_bench(context=args.context, bits=args.bits)


if __name__ == "__main__":
    main()
