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

The other kernel the design names (block-sparse prefill attention) is still to come; the references of the
selection helpers live in ``vlmzip.selection``. This package imports nothing of vlmzip.
"""
