"""Kernels against their references on a CUDA GPU: ``python -m vlmzip.kernels.bench [mass|tower|decode|sparse]``.

``sparse`` (``sparse_bench``): block-sparse prefill attention of one Qwen2.5-VL-7B-like layer (B=1, Hq=28, Hkv=4,
d=128, bf16, blocks of 128) at 8K / 32K / 128K tokens (``--lengths``) and causal densities 0.05 / 0.1 / 0.15 /
0.3 (``--densities``: the share of the causal blocks listed; random per-head masks that always hold the diagonal
block and the first "sink" column). Times dense causal SDPA (keys and values repeated to Hq heads outside the
timing), FlexAttention compiled with the same blocks, and the Triton kernel (``DEFAULT_CONFIG``, or with
``--configs`` a sweep of ``SPARSE_CONFIGS``). Prints median ms, the time to build each path's block lists from the
dense mask (``block_lists``; Flex: its ``BlockMask`` too; part of a selection method's cost), achieved TFLOP/s
over the blocks computed (4 * 128 * 128 * d FLOPs a block and head; SDPA: the causal half), the speed-up over
SDPA and, at lengths up to 8K, the max abs difference from Flex's output. First ``sparse_check`` compares both
fused paths with the reference on 1,000 tokens under left padding, bidirectional spans and a window. ``--smoke``
runs a tiny case on the CPU (``TRITON_INTERPRET=1 python -m vlmzip.kernels.bench sparse --smoke``) to show the
script runs end to end.

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

from vlmzip.kernels import block_sparse_attention as bsa
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


def _timed(function, repeats: int, cuda: bool | None = None) -> tuple[torch.Tensor, float]:
    """Output and median milliseconds of ``function()`` (CUDA events on a GPU, wall clock elsewhere; ``cuda``:
    which, for an output that is not a tensor)."""
    out = function()  # warm-up
    cuda = out.is_cuda if cuda is None else cuda
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


#: ``--configs``' sweep of the Triton kernel's ``Config``s: (block_m, block_n, num_warps, num_stages)
SPARSE_CONFIGS = [
    (m, n, warps, stages) for m in (64, 128) for n in (32, 64, 128) for warps in (4, 8) for stages in (2, 3, 4)
]
#: ``--smoke``: a tiny case on the CPU (the kernel under Triton's interpreter, Flex unfused)
SPARSE_SMOKE = {"lengths": (70,), "densities": (0.5,), "heads": 4, "kv_heads": 2, "dim": 16, "block": 16,
                "device": "cpu", "dtype": torch.float32, "repeats": 1}  # fmt: skip


def random_block_mask(heads: int, length: int, block: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """``[1, heads, n, n]`` causal block masks listing about ``density`` of the ``n (n + 1) / 2`` causal blocks
    at random, each row with its diagonal block and the first column (the attention sink)."""
    n = -(-length // block)
    causal = torch.ones(n, n, dtype=torch.bool, device=generator.device).tril()
    forced = torch.eye(n, dtype=torch.bool, device=generator.device)
    forced[:, 0] = True
    n_forced, n_causal = forced.sum().item(), n * (n + 1) // 2
    share = min(1.0, max(0.0, (density * n_causal - n_forced) / max(1, n_causal - n_forced)))
    drawn = torch.rand(1, heads, n, n, generator=generator, device=generator.device) < share
    return (drawn | forced) & causal


def sparse_check(
    length: int = 1000,
    block: int = 128,
    heads: int = 28,
    kv_heads: int = 4,
    dim: int = 128,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
) -> list[dict]:
    """The fused paths against the reference on the masks the timing leaves out (the tests run them only under
    Triton's interpreter): two samples of ``length`` tokens (not a multiple of ``block``), per-head masks at
    density 0.5 with left padding (``key_start``), bidirectional spans (``key_end``), a sliding window, and a
    broadcast mask of every block (dense). Returns one row per (case, path) with the max abs difference; prints
    them."""
    generator = torch.Generator(device=device).manual_seed(1)
    query, key, value = (
        torch.randn(2, n, length, dim, device=device, dtype=dtype, generator=generator)
        for n in (heads, kv_heads, kv_heads)
    )
    grid = bsa.block_grid(length, block, block)
    ends = torch.arange(length, device=device).repeat(2, 1)
    ends[0, length // 4 : length // 2] = length // 2  # an image's tokens see the whole image
    ends[1, length // 2 :] = length - 1
    half = torch.rand(2, heads, *grid, device=device, generator=generator) < 0.5
    cases = [
        ("dense", torch.ones(2, 1, *grid, dtype=torch.bool, device=device), {}),
        ("padded", half, {"key_start": torch.tensor([0, length // 3], device=device)}),
        ("spans", half, {"key_end": ends, "key_start": torch.tensor([7, 0], device=device)}),
        ("window", half, {"window": length // 5}),
    ]
    rows = []
    print(f"{'case':8} {'path':8} {'max |diff|':>11}")
    for name, block_mask, masks in cases:
        args = {"block_q": block, "block_k": block, **masks}
        expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, **args).float()
        for path in ("triton", "flex"):
            out = bsa.block_sparse_attention(query, key, value, block_mask, backend=path, **args)
            rows.append({"case": name, "path": path, "diff": (out.float() - expected).abs().max().item()})
            print(f"{name:8} {path:8} {rows[-1]['diff']:11.2e}")
    return rows


def sparse_bench(
    lengths: tuple[int, ...] = (8192, 32768, 131072),
    densities: tuple[float, ...] = (0.05, 0.1, 0.15, 0.3),
    heads: int = 28,
    kv_heads: int = 4,
    dim: int = 128,
    block: int = 128,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 10,
    configs: list[tuple[int, int, int, int]] | None = None,
    check_length: int = 8192,
) -> list[dict]:
    """Time dense causal SDPA, FlexAttention and the Triton kernel (each of ``configs``; default its
    ``DEFAULT_CONFIG``) on random block masks (``random_block_mask``) per length and density; see the module
    docstring. Returns one row per (length, density, path) and prints them."""
    import triton

    from vlmzip.kernels import _block_sparse_attention_triton as kernel

    generator = torch.Generator(device=device).manual_seed(0)
    scale, sdpa = dim**-0.5, torch.nn.functional.scaled_dot_product_attention
    block_flops = 4 * block * block * dim
    rows = []
    print(f"{'length':>7} {'density':>7} {'path':18} {'ms':>9} {'lists ms':>9} {'TFLOP/s':>8} {'speed-up':>8} "
          f"{'max |diff|':>11}")  # fmt: skip
    for length in lengths:
        query, key, value = (
            torch.randn(1, n, length, dim, device=device, dtype=dtype, generator=generator)
            for n in (heads, kv_heads, kv_heads)
        )
        timed = partial(_timed, repeats=repeats, cuda=query.is_cuda)
        repeated = [t.repeat_interleave(heads // kv_heads, dim=1) for t in (key, value)]
        _, sdpa_ms = timed(partial(sdpa, query, *repeated, is_causal=True, scale=scale))
        del repeated
        sdpa_flops = 2 * dim * heads * length * (length + 1)  # 4 d per visible (row, key) pair
        for density in densities:
            block_mask = random_block_mask(heads, length, block, density, generator)
            args = {"block_q": block, "block_k": block}
            lists, lists_ms = timed(partial(bsa.block_lists, block_mask, length, block, block))
            computed = lists.total.sum().item()
            reached = computed / (heads * block_mask.shape[-1] * (block_mask.shape[-1] + 1) / 2)
            blocks, flex_build_ms = timed(partial(bsa.flex_block_mask, query, block_mask, **args))
            expected, flex_ms = timed(partial(bsa.flex_attend, query, key, value, blocks, scale))
            timings = [("sdpa", sdpa_ms, 0.0, sdpa_flops, None), ("flex", flex_ms, flex_build_ms, None, expected)]
            for config in configs or [tuple(kernel.DEFAULT_CONFIG)]:
                name = "triton " + "/".join(map(str, config))
                launch = partial(kernel.launch, query, key, value, lists, scale, block, block, None, None, None,
                                 kernel.Config(*config))  # fmt: skip
                try:
                    out, ms = timed(launch)
                except triton.runtime.errors.OutOfResources as error:  # a config too big for the GPU: shown, skipped
                    print(f"{length:7d} {reached:7.3f} {name:18} failed: {error}")
                    continue
                timings.append((name, ms, lists_ms, None, out))
            for path, ms, build_ms, flops, out in timings:
                flops = computed * block_flops if flops is None else flops
                check = out is not None and length <= check_length
                diff = (out.float() - expected.float()).abs().max().item() if check else float("nan")
                rows.append({"length": length, "density": reached, "path": path, "ms": ms, "build_ms": build_ms,
                             "tflops": flops / ms / 1e9, "speedup": sdpa_ms / ms, "diff": diff})  # fmt: skip
                print(f"{length:7d} {reached:7.3f} {path:18} {ms:9.3f} {build_ms:9.3f} {flops / ms / 1e9:8.1f} "
                      f"{sdpa_ms / ms:7.2f}x {diff:11.2e}")  # fmt: skip
            del blocks, expected, timings
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("mass", "tower", "decode", "sparse"), default="mass")
    parser.add_argument("--frames", type=int, default=64, help="tower: video frames (default 64)")
    parser.add_argument("--bits", type=int, choices=(2, 4, 8), default=2, help="decode: bits of the cache (default 2)")
    parser.add_argument("--context", type=int, default=16384, help="decode: tokens in the cache (default 16384)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072], help="sparse: tokens")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.3],
                        help="sparse: shares of the causal blocks listed")  # fmt: skip
    parser.add_argument("--configs", action="store_true", help="sparse: sweep the kernel's configs (SPARSE_CONFIGS)")
    parser.add_argument("--smoke", action="store_true", help="sparse: a tiny CPU run (needs TRITON_INTERPRET=1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.what == "sparse" and args.smoke:
        from vlmzip.kernels import _block_sparse_attention_triton as kernel

        if not kernel.INTERPRETED:
            raise SystemExit("--smoke runs the kernel on the CPU: set TRITON_INTERPRET=1 (before Python starts)")
        sparse_check(length=70, block=16, heads=4, kv_heads=2, dim=16, device="cpu", dtype=torch.float32)
        sparse_bench(**SPARSE_SMOKE, configs=SPARSE_CONFIGS[:2] if args.configs else None)
        return
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark times CUDA kernels: no CUDA device here")
    if args.what == "mass":
        mass_bench()
    elif args.what == "tower":
        tower_bench(frames=args.frames)
    elif args.what == "sparse":
        sparse_check()
        sparse_bench(tuple(args.lengths), tuple(args.densities), configs=SPARSE_CONFIGS if args.configs else None)
    else:
        decode_bench(context=args.context, bits=args.bits)


if __name__ == "__main__":
    main()
