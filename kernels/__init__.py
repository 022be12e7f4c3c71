"""GPU kernels (Triton), each beside a plain-torch reference with the same signature.

* ``attention_mass``: the softmax attention a set of query rows puts on every key, head-averaged, without the
  ``[Q, K]`` matrix (``attention_mass_triton``; ``attention_mass_reference``). ``vlmzip.scoring`` runs the kernel
  on CUDA tensors and the reference elsewhere. ``python -m vlmzip.kernels.bench`` times both on a GPU.
* ``chunk_attention``: block-diagonal attention over a packed sequence of chunks (Qwen's vision windows and frames)
  in batched calls of a given attention function, beside the per-chunk loop it replaces
  (``chunk_attention_loop``); ``python -m vlmzip.kernels.bench tower`` times them on a GPU.
* ``kv_quant``: KV-cache quantisation to 2, 4 or 8 bits with a scale and zero point per group (KIVI's layouts:
  keys grouped along tokens, values along channels), codes packed into bytes (``PackedKV``), and the exact bytes
  of a packed tensor (``packed_nbytes``). ``quantize``/``dequantize`` run Triton on CUDA, the reference elsewhere.
* ``decode_attention``: the few query rows of a decode step over a packed segment and a full-precision one, the
  packed cache read directly (split over the context); ``python -m vlmzip.kernels.bench decode`` times it against
  bf16 SDPA on a GPU.
* ``block_sparse_attention``: prefill attention over the key blocks a block mask lists per (sample, head, query
  block), causal or with ``key_start``/``key_end`` bounds and a sliding window, grouped-query; a Triton kernel
  (``block_sparse_attention_triton``) and a FlexAttention path (``block_sparse_attention_flex``) over the same
  per-row block lists (``block_lists``), the reference on the CPU; ``python -m vlmzip.kernels.bench sparse`` times
  them against dense SDPA on a GPU (work per block and the floor at 32K: the kernel module's docstring).

The references of the selection helpers live in ``vlmzip.selection``. This package imports nothing of vlmzip.
"""
