"""Token scores: attention-derived (computed without materialising the full attention matrix), and a
projector's forward-only sensitivity.

The attention functions run the fused Triton kernel (``vlmzip.kernels.attention_mass``) on CUDA tensors where Triton is
installed, and its plain-torch reference elsewhere: CPU results are the reference's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlmzip.kernels.attention_mass import attention_mass_reference, attention_mass_triton, triton_available
from vlmzip.selection import gather_rows, pack_left


def attention_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
    *,
    query_positions: torch.Tensor | None = None,
    window: int | None = None,
    key_valid: torch.Tensor | None = None,
    query_segments: torch.Tensor | None = None,
    key_segments: torch.Tensor | None = None,
    reduce: str = "mean",
) -> torch.Tensor:
    """Softmax attention each key receives from a set of queries, averaged over heads, then averaged
    (``reduce="mean"``) or summed (``"sum"``) over queries: ``[B, K]`` float32.

    query: ``[B, H, Q, d]`` (post-RoPE); key: ``[B, Hkv, K, d]`` with ``H % Hkv == 0``; mask: broadcastable to
    ``[B, 1|H, Q, K]``, bool (True = may attend) or additive float, or None. The keyword masks are cheaper
    stand-ins for dense ones (causal ``query_positions`` and ``window``, padding ``key_valid``, equal-id
    ``query_segments``/``key_segments``; see ``vlmzip.kernels.attention_mass``). With ``"mean"``, rows sum to 1
    when every query sees a key. The CPU reference processes ``chunk_size`` queries at a time
    (``O(B * H * chunk_size * K)`` memory); the kernel needs ``O(B * H * Q + B * K)``.
    """
    return _implementation(query)(
        query, key, scaling, softcap=softcap, mask=mask, query_positions=query_positions, window=window,
        key_valid=key_valid, query_segments=query_segments, key_segments=key_segments, reduce=reduce,
        chunk_size=chunk_size,
    )  # fmt: skip


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
    *,
    query_positions: torch.Tensor | None = None,
    window: int | None = None,
    key_valid: torch.Tensor | None = None,
    query_segments: torch.Tensor | None = None,
    key_segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged softmax attention of every query over every key, ``[B, Q, K]`` float32.

    Same arguments as ``attention_mass``; for a few query rows (a prompt's text tokens), where each row's own
    distribution matters (maxima, per-query thresholds), not only their mean. One query's row is bit-identical
    to its ``attention_mass``.
    """
    return _implementation(query)(
        query, key, scaling, softcap=softcap, mask=mask, query_positions=query_positions, window=window,
        key_valid=key_valid, query_segments=query_segments, key_segments=key_segments, per_query=True,
        chunk_size=chunk_size,
    )  # fmt: skip


def uses_kernel(tensor: torch.Tensor) -> bool:
    """Whether scores of tensors on ``tensor``'s device come from the Triton kernel (else the reference)."""
    return tensor.is_cuda and triton_available()


def _implementation(tensor: torch.Tensor):
    return attention_mass_triton if uses_kernel(tensor) else attention_mass_reference


def rater_rows(hidden: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters: the ``text`` rows whose relevance to the ``visual`` rows is above the sample's
    mean (all text rows where none is), ``[B, L]`` bool. hidden: ``[B, L, D]``; visual, text: ``[B, L]`` bool.

    A text row's relevance is its share of a softmax over the text rows of visual x text hidden-state products,
    averaged over the visual rows.
    """
    index, valid = pack_left(text)
    hidden = hidden.float()
    logits = hidden @ gather_rows(hidden, index, dim=1).transpose(1, 2)  # [B, L, T]
    relevance = logits.masked_fill(~valid[:, None, :], float("-inf")).softmax(dim=-1)
    weights = visual[:, :, None].float()
    relevance = (relevance * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # [B, T]
    mean = (relevance * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    above = valid & (relevance > mean)
    above |= valid & ~above.any(dim=1, keepdim=True)
    return torch.zeros_like(text).scatter(1, index, above)


def projection_sensitivity(
    project: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, directions: int, epsilon: float, seed: int
) -> torch.Tensor:
    """``batched_projection_sensitivity`` of one item's tokens, ``inputs [n, U, D]``: ``[n]`` float32."""
    return batched_projection_sensitivity(project, [inputs], directions, epsilon, seed)[0]


@torch.no_grad()
def batched_projection_sensitivity(
    project: Callable[[torch.Tensor], torch.Tensor],
    inputs: list[torch.Tensor],
    directions: int,
    epsilon: float,
    seed: int,
) -> list[torch.Tensor]:
    """How much a projector's output moves per unit of input movement, for each token of each item: a zeroth-order
    (forward-only) estimate of the norm of its Jacobian, ``[n_b]`` float32 per item.

    project: ``[m, U, D] -> [m, E]``; inputs: one ``[n_b, U, D]`` per item (items may differ in ``n_b``). Each
    token's input moves along ``directions`` random unit directions (the same for every token, drawn from ``seed``
    on the CPU, so the estimate does not depend on the device or the batch; drawn and copied to the device once for
    the batch), by ``epsilon`` times its own norm; the estimate is the mean of ``|project(x + delta) - project(x)| /
    |delta|``. Each item's moves and unmoved inputs run in one projector call of their own: one call for the whole
    batch would round differently on more rows, and an item's choice would then depend on the rest of the batch.
    """
    if not inputs:
        return []
    generator = torch.Generator().manual_seed(seed)
    unit = torch.randn(directions, *inputs[0].shape[1:], generator=generator, dtype=torch.float64)
    unit = (unit / unit.flatten(1).norm(dim=1).view(-1, *[1] * (unit.dim() - 1))).to(inputs[0].device)
    return [_sensitivity(project, x, unit, epsilon) for x in inputs]


def _sensitivity(project, inputs: torch.Tensor, unit: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One item's estimate, ``[n]``, along the unit directions ``unit [R, U, D]`` (float64, on its device)."""
    n, directions = inputs.shape[0], unit.shape[0]
    size = epsilon * inputs.flatten(1).double().norm(dim=1).clamp(min=1e-12)  # [n]
    moves = (size.view(1, n, *[1] * (inputs.dim() - 1)) * unit[:, None]).to(inputs.dtype)  # [R, n, U, D]
    moved = inputs[None] + moves
    outputs = project(torch.cat([inputs[None], moved]).flatten(0, 1)).view(directions + 1, n, -1)
    change = (outputs[1:] - outputs[:1]).float().norm(dim=-1)  # [R, n]
    # divide by the move as it happened (rounded to the input's dtype), not as intended
    moved_by = (moved - inputs[None]).float().flatten(2).norm(dim=-1)
    return (change / moved_by.clamp(min=1e-30)).mean(dim=0)


def best_cosine_match(
    evicted: torch.Tensor, kept: torch.Tensor, valid: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, each of ``evicted [B, H, E, d]``'s best cosine similarity to a key of ``kept [B, H, K, d]`` that
    ``valid [B, K]`` allows, and that key's index: ``[B, H, E]`` each. The ``[E, K]`` similarities are formed
    ``chunk`` evicted keys at a time (a long video evicts thousands)."""
    kept = F.normalize(kept.float(), dim=-1).transpose(-1, -2)
    padding = ~valid.to(kept.device)[:, None, None, :]
    best = [
        (F.normalize(part.float(), dim=-1) @ kept).masked_fill(padding, -torch.inf).max(dim=-1)
        for part in evicted.split(chunk, dim=2)
    ]
    return torch.cat([b.values for b in best], dim=2), torch.cat([b.indices for b in best], dim=2)
