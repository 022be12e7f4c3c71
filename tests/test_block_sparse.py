"""Block-sparse prefill attention: the Triton kernel (under Triton's interpreter on the CPU: tests/conftest.py sets
``TRITON_INTERPRET=1`` before any import) and the FlexAttention path against the plain-torch reference on fresh
random inputs; the block lists they share; the dispatch; bad arguments; the GPU bench's CPU smoke run."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from vlmzip.kernels import bench
from vlmzip.kernels import block_sparse_attention as bsa

# Triton 3.6's interpreter converts loop bounds with int(array), which numpy 2.3 only warns about; Flex warns that
# it runs unfused off CUDA (the CPU path here, by design)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning"),
]

# fp32 within ~1e-5; bf16 within a rounding of the output (the interpreter multiplies bf16 tiles in fp32)
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)}
SMALL = (32, 16, 4, 1)  # a Config of tiles smaller than most test blocks: several tiles a block


@pytest.fixture(scope="module")
def kernel():
    if sys.platform != "linux":
        pytest.skip("Triton ships Linux wheels only")
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module("vlmzip.kernels._block_sparse_attention_triton")
    if not all(isinstance(function, InterpretedFunction) for function in (standard.cdiv, module._forward)):
        pytest.fail("Triton was imported before TRITON_INTERPRET=1 was set: set it before anything imports torch")
    return bsa.block_sparse_attention_triton


def _inputs(batch, heads, kv_heads, length, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, length, dim, generator=gen).to(dtype) for n in (heads, kv_heads, kv_heads))


def _mask(batch, heads, length, block_q, block_k, density, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, heads, *bsa.block_grid(length, block_q, block_k), generator=gen) < density


def _close(out, expected, dtype):
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol)


# (length, block_q, block_k, Hq, Hkv, mask heads, masks): odd lengths, GQA 1/2/4, both mask layouts, each mask kind
CASES = [
    (1, 16, 16, 2, 2, 2, {}),
    (17, 16, 16, 4, 1, 1, {"key_start": [3, 0]}),
    (70, 32, 16, 4, 2, 4, {}),
    (70, 16, 32, 4, 4, 1, {"window": 9}),
    (130, 32, 32, 4, 1, 4, {"key_start": [0, 37], "key_end": "spans"}),
    (130, 64, 32, 2, 1, 1, {"window": 40, "key_start": [5, 70]}),
]


def _masks(length: int, masks: dict) -> dict:
    """The case's masks as tensors; ``key_end="spans"``: causal rows, but rows 20-49 of sample 0 see up to 60 and
    rows 90-109 of sample 1 the whole sequence (bidirectional spans, as Gemma-3's image tokens)."""
    out = {"window": masks.get("window")}
    if "key_start" in masks:
        out["key_start"] = torch.tensor(masks["key_start"])
    if "key_end" in masks:
        end = torch.arange(length).repeat(2, 1)
        end[0, 20:50], end[1, 90:110] = 60, length + 5
        out["key_end"] = end
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[f"S{c[0]}-{c[1]}x{c[2]}-G{c[3] // c[4]}-M{c[5]}" for c in CASES])
def test_the_kernel_matches_the_reference(kernel, case, dtype):
    length, block_q, block_k, heads, kv_heads, mask_heads, masks = case
    query, key, value = _inputs(2, heads, kv_heads, length, 16, dtype, seed=length)
    block_mask = _mask(2, mask_heads, length, block_q, block_k, 0.6, seed=length + 1)
    args = {"block_q": block_q, "block_k": block_k, "scale": 0.3, **_masks(length, masks)}
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, **args)
    out = kernel(query, key, value, block_mask, config=SMALL, **args)
    assert out.dtype == dtype and out.shape == query.shape
    _close(out, expected, dtype)


def test_the_default_config_and_a_head_dim_below_its_tile(kernel):
    """d = 24 pads to a 32-wide tile; 64x64 blocks under the default 128x64 tiles (clipped to the block)."""
    query, key, value = _inputs(1, 4, 2, 150, 24, torch.float32, seed=3)
    block_mask = _mask(1, 4, 150, 64, 64, 0.7, seed=4)
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, block_q=64, block_k=64)
    _close(kernel(query, key, value, block_mask, block_q=64, block_k=64), expected, torch.float32)


def test_fp16_and_an_empty_prompt(kernel):
    query, key, value = _inputs(1, 4, 2, 70, 16, torch.float16, seed=17)
    block_mask = _mask(1, 4, 70, 16, 16, 0.6, seed=18)
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, block_q=16, block_k=16)
    _close(kernel(query, key, value, block_mask, block_q=16, block_k=16), expected, torch.float16)
    empty = torch.ones(1, 1, 0, 0, dtype=torch.bool)
    for function in (kernel, bsa.block_sparse_attention_flex):
        assert function(query[:, :, :0], key[:, :, :0], value[:, :, :0], empty).shape == (1, 4, 0, 16)


def test_every_block_selected_is_dense_causal_attention(kernel):
    query, key, value = _inputs(2, 4, 2, 70, 16, torch.float32, seed=5)
    every = torch.ones(2, 1, *bsa.block_grid(70, 16, 32), dtype=torch.bool)
    dense = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    for function in (kernel, bsa.block_sparse_attention_flex, bsa.block_sparse_attention_reference):
        _close(function(query, key, value, every, block_q=16, block_k=32), dense, torch.float32)


def test_rows_that_see_nothing_are_zeros(kernel):
    """A query block with no listed key block, and left padding (rows before ``key_start`` see no key)."""
    query, key, value = _inputs(2, 2, 1, 70, 16, torch.float32, seed=6)
    block_mask = torch.ones(2, 2, *bsa.block_grid(70, 16, 16), dtype=torch.bool)
    block_mask[0, 1, 2] = False  # rows 32-47 of sample 0, head 1
    block_mask[1, :, :, 1:3] = False  # sample 1's rows 16-47 see only their left padding: nothing
    key_start = torch.tensor([0, 40])
    args = {"block_q": 16, "block_k": 16, "key_start": key_start}
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, **args)
    for function in (kernel, bsa.block_sparse_attention_flex):
        out = (
            function(query, key, value, block_mask, config=SMALL, **args)
            if function is kernel
            else function(query, key, value, block_mask, **args)
        )
        assert out[0, 1, 32:48].eq(0).all() and out[1, :, :40].eq(0).all() and out[0, 0, 32:48].ne(0).all()
        _close(out, expected, torch.float32)


def test_a_broadcast_mask_is_the_per_head_mask_repeated(kernel):
    query, key, value = _inputs(1, 4, 2, 70, 16, torch.bfloat16, seed=7)
    block_mask = _mask(1, 1, 70, 32, 16, 0.5, seed=8)
    one = kernel(query, key, value, block_mask, block_q=32, block_k=16, config=SMALL)
    each = kernel(query, key, value, block_mask.expand(1, 4, -1, -1), block_q=32, block_k=16, config=SMALL)
    assert torch.equal(one, each)


def test_any_query_layout(kernel):
    """A query seen as ``[B, H, S, d]`` through a transpose of ``[B, S, H, d]`` (what a projection makes)."""
    query, key, value = _inputs(1, 2, 2, 40, 16, torch.float32, seed=9)
    block_mask = _mask(1, 2, 40, 16, 16, 0.7, seed=10)
    transposed = query.transpose(1, 2).contiguous().transpose(1, 2)
    assert not transposed.is_contiguous()
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, block_q=16, block_k=16)
    _close(kernel(transposed, key, value, block_mask, block_q=16, block_k=16, config=SMALL), expected, torch.float32)


@pytest.mark.parametrize("case", CASES[1:5:3], ids=["S17", "S130"])
def test_the_flex_path_matches_the_reference(case):
    length, block_q, block_k, heads, kv_heads, mask_heads, masks = case
    query, key, value = _inputs(2, heads, kv_heads, length, 16, torch.float32, seed=11)
    block_mask = _mask(2, mask_heads, length, block_q, block_k, 0.6, seed=12)
    args = {"block_q": block_q, "block_k": block_k, **_masks(length, masks)}
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, **args)
    _close(bsa.block_sparse_attention_flex(query, key, value, block_mask, **args), expected, torch.float32)


def test_block_lists_drop_invisible_blocks_and_list_partial_ones_first():
    """8 tokens in blocks of 2 (4 x 4 blocks), every block listed, sample 1 left-padded by 3 and windowed by 4."""
    every = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    lists = bsa.block_lists(every, 7, 2, 2, key_start=torch.tensor([0, 3]))  # the last key block is short
    # sample 0, causal: the diagonal is partial, blocks left of it full; the short last block (key 6) partial
    assert lists.partial[0, 0].tolist() == [1, 1, 1, 1] and lists.total[0, 0].tolist() == [1, 2, 3, 4]
    assert lists.indices[0, 0, 3].tolist() == [3, 0, 1, 2]
    # sample 1: key block 0 (keys 0-1) is padding, block 1 (keys 2-3) straddles key_start
    assert lists.total[1, 0].tolist() == [0, 1, 2, 3] and lists.partial[1, 0].tolist() == [0, 1, 2, 2]
    assert lists.indices[1, 0, 3, :3].tolist() == [1, 3, 2]
    windowed = bsa.block_lists(every, 8, 2, 2, window=3)  # row 7 sees keys 5-7, row 6 keys 4-6
    assert windowed.total[0, 0].tolist() == [1, 2, 2, 2] and windowed.partial[0, 0].tolist() == [1, 2, 2, 2]
    assert windowed.indices[0, 0, 3, :2].tolist() == [2, 3]
    spans = bsa.block_lists(every, 8, 2, 2, key_end=torch.tensor([[1, 1, 7, 7, 7, 7, 6, 7]] * 2))
    assert spans.total[0, 0].tolist() == [1, 4, 4, 4] and spans.partial[0, 0].tolist() == [0, 0, 0, 1]


def test_dispatch():
    query, key, value = _inputs(1, 2, 1, 20, 16, torch.float32, seed=13)
    block_mask = _mask(1, 2, 20, 16, 16, 0.8, seed=14)
    assert bsa.choose_backend(query, block_mask) == "reference"  # off CUDA
    expected = bsa.block_sparse_attention_reference(query, key, value, block_mask, block_q=16, block_k=16)
    for backend in ("auto", "reference"):
        out = bsa.block_sparse_attention(query, key, value, block_mask, block_q=16, block_k=16, backend=backend)
        assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="backend='cuda': choose one of 'auto', 'triton', 'flex', 'reference'"):
        bsa.block_sparse_attention(query, key, value, block_mask, block_q=16, block_k=16, backend="cuda")


def _refusal(change: str):
    query, key, value = _inputs(2, 4, 2, 40, 16, torch.float32, seed=15)
    args = {"block_q": 16, "block_k": 16}
    mask = torch.ones(2, 4, 3, 3, dtype=torch.bool)
    if change == "block size":
        args["block_k"] = 48
    elif change == "mask grid":
        mask = mask[:, :, :2]
    elif change == "mask dtype":
        mask = mask.float()
    elif change == "mask heads":
        mask = mask[:, :2]
    elif change == "heads":
        key, value = key[:, :1].expand(2, 3, 40, 16), value[:, :1].expand(2, 3, 40, 16)
    elif change == "key_start":
        args["key_start"] = torch.zeros(3, dtype=torch.long)
    elif change == "key_end":
        args["key_end"] = torch.zeros(2, 39, dtype=torch.long)
    elif change == "window":
        args["window"] = 0
    return query, key, value, mask, args


REFUSALS = {
    "block size": r"block_k=48: block sizes must be powers of two >= 16",
    "mask grid": r"block_mask \(2, 4, 2, 3\) does not fit 40 tokens in blocks of 16x16: expected \[2, 4 or 1, 3, 3\]",
    "mask dtype": r"block_mask must be bool \[B, Hq or 1, 3, 3\], got torch.float32",
    "mask heads": r"expected \[2, 4 or 1, 3, 3\]",
    "heads": r"Hq must be a multiple of Hkv",
    "key_start": r"key_start must be \[B\] = \[2\], got \(3,\)",
    "key_end": r"key_end must be \[B, S\] = \[2, 40\], got \(2, 39\)",
    "window": r"window=0: a sliding window holds at least one key",
}


@pytest.mark.parametrize("change", REFUSALS)
def test_every_path_refuses_arguments_that_do_not_fit(kernel, change):
    query, key, value, mask, args = _refusal(change)
    for function in (bsa.block_sparse_attention_reference, kernel, bsa.block_sparse_attention_flex):
        with pytest.raises(ValueError, match=REFUSALS[change]):
            function(query, key, value, mask, **args)


def test_the_kernels_refuse_mixed_dtypes_and_bad_tiles(kernel):
    query, key, value = _inputs(1, 2, 1, 20, 16, torch.float32, seed=16)
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    for function in (kernel, bsa.block_sparse_attention_flex):
        with pytest.raises(ValueError, match="key and value must have the query's dtype torch.float32"):
            function(query, key.half(), value, mask, block_q=16, block_k=16)
        with pytest.raises(ValueError, match="query must be bf16, fp16 or fp32 for the kernels, got torch.float64"):
            function(query.double(), key.double(), value.double(), mask, block_q=16, block_k=16)
    with pytest.raises(ValueError, match="config block_n=24: tile sizes must be powers of two >= 16"):
        kernel(query, key, value, mask, block_q=16, block_k=16, config=(16, 24, 4, 1))


def test_the_sparse_bench_parses_its_arguments_and_runs_on_the_cpu(kernel, capsys):
    """``python -m vlmzip.kernels.bench sparse`` times the kernels on a GPU; here its smoke run on the CPU (the
    kernel interpreted, Flex unfused) so that the code cannot rot."""
    args = bench.parser().parse_args(["sparse", "--lengths", "8192", "--densities", "0.1", "0.2", "--configs"])
    assert (args.what, args.lengths, args.densities, args.configs) == ("sparse", [8192], [0.1, 0.2], True)
    checked = bench.sparse_check(length=70, block=16, heads=4, kv_heads=2, dim=16, device="cpu", dtype=torch.float32)
    assert [(row["case"], row["path"]) for row in checked[::2]] == [
        ("dense", "triton"), ("padded", "triton"), ("spans", "triton"), ("window", "triton")
    ]  # fmt: skip
    assert all(row["diff"] < 1e-5 for row in checked)
    rows = bench.sparse_bench(**bench.SPARSE_SMOKE, configs=[(32, 16, 4, 1), (16, 16, 4, 1)])
    paths = [row["path"] for row in rows]
    assert paths == ["sdpa", "flex", "triton 32/16/4/1", "triton 16/16/4/1"]
    assert all(row["diff"] < 1e-5 for row in rows if row["path"].startswith("triton"))
    # 5 x 5 blocks of 16: the 5 diagonal and 4 more sink blocks forced, 6 of 15 causal blocks drawn at about 1/6
    assert 9 / 15 <= rows[-1]["density"] <= 1 and rows[-1]["build_ms"] == rows[-2]["build_ms"] > 0
    assert "triton 16/16/4/1" in capsys.readouterr().out
    mask = bench.random_block_mask(3, 1000, 128, 0.3, torch.Generator().manual_seed(0))
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    assert mask.shape == (1, 3, 8, 8) and not (mask & ~causal).any() and mask[..., 0].all()
    assert mask.diagonal(dim1=-2, dim2=-1).all() and 0.3 * 36 * 3 / 2 < mask.sum() < 0.3 * 36 * 3 * 2
