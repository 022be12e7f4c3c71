"""Attention-mass kernel against its chunked torch reference on a CUDA GPU: ``python -m vlmzip.kernels.bench``.

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

import torch

from vlmzip.kernels.attention_mass import attention_mass_reference, attention_mass_triton


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


def main() -> None:
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


if __name__ == "__main__":
    main()
