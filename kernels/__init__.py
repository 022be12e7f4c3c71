"""GPU kernels (Triton), each beside a plain-torch reference with the same signature. None yet: the
references live in ``vlmzip.scoring`` and ``vlmzip.selection`` until their fused versions land."""
