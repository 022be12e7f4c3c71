"""KV quantisation and decode attention over the packed cache: the references against their definitions (error
bounds, bit layout, exact bytes, a dense softmax), the Triton kernels against the references under Triton's
interpreter on the CPU (tests/conftest.py sets ``TRITON_INTERPRET=1`` before any import), and bad arguments."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from vlmzip.kernels import bench
from vlmzip.kernels import decode_attention as da
from vlmzip.kernels import kv_quant as kq

# Triton 3.6's interpreter converts loop bounds with int(array), which numpy 2.3 only warns about
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the kernels against the references: fp32 within ~1e-5; 16-bit outputs within a rounding of the output dtype
# (the interpreter truncates fp32 to bf16 where torch rounds to nearest, and fp16 tiles multiply in fp16)
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)}


def _interpreted(module: str, kernel: str) -> None:
    """Fail with the reason if the Triton side was imported before ``TRITON_INTERPRET=1`` was set."""
    if sys.platform != "linux":
        pytest.skip("Triton ships Linux wheels only")
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    # Triton's standard library and the module's own kernel: both decorated under the interpreter
    functions = (standard.cdiv, getattr(importlib.import_module(module), kernel))
    if not all(isinstance(function, InterpretedFunction) for function in functions):
        pytest.fail("Triton was imported before TRITON_INTERPRET=1 was set: set it before anything imports torch")


@pytest.fixture(scope="module")
def quant_kernels():
    _interpreted("vlmzip.kernels._kv_quant_triton", "_quantize")
    return kq.quantize_triton, kq.dequantize_triton


@pytest.fixture(scope="module")
def decode_kernel():
    _interpreted("vlmzip.kernels._decode_attention_triton", "_split")
    return da.decode_attention_triton


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int, constant_groups: int = 0) -> torch.Tensor:
    """Random values with outliers, scaled so fp16 stays in range; the first ``constant_groups`` rows constant."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.rand(shape[-1], generator=gen) * 4 + torch.randn(1, generator=gen)
    if constant_groups:
        x[..., :constant_groups, :] = 1.7
    return x.to(dtype)


def _expanded(packed: kq.PackedKV, tensor: torch.Tensor) -> torch.Tensor:
    """A per-group tensor (scale or zero) repeated over its group's elements, fp32."""
    axis = -2 if packed.group_along == "tokens" else -1
    return tensor.float().repeat_interleave(packed.group_size, dim=axis)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", kq.BITS)
@pytest.mark.parametrize("group_along", kq.GROUP_ALONG)
def test_round_trip_is_within_half_a_scale_and_exact_for_constant_groups(dtype, bits, group_along):
    shape, group = (2, 3, 48, 24), 8 if group_along == "tokens" else 12
    x = _tensor(shape, dtype, bits, constant_groups=16)  # two token groups, every channel group of 16 tokens
    packed = kq.quantize_reference(x, bits, group, group_along)
    back = kq.dequantize_reference(packed)
    assert back.shape == x.shape and back.dtype == dtype and packed.shape == x.shape
    scale, zero = _expanded(packed, packed.scale), _expanded(packed, packed.zero)
    error = (back.float() - x.float()).abs()
    # half a step, plus the rounding of the read-back value to the tensor's dtype
    bound = scale / 2 * (1 + 1e-6) + torch.finfo(dtype).eps * back.float().abs()
    assert (error <= bound).all(), (error - bound).max()
    constant = scale == 0
    assert constant[..., :16, :].all() and torch.equal(back[constant], x[constant])
    # the grid covers the group (fp32 scales are not rounded up: up to an fp32 rounding)
    top = zero + scale * ((1 << bits) - 1)
    assert (zero <= x.float()).all() and (top >= x.float() - 1e-6 * (zero.abs() + top.abs())).all()


@pytest.mark.parametrize(("bits", "values", "payload"), [(2, [0, 1, 2, 3], [0b11100100]), (4, [0, 15], [0xF0]),
                                                         (8, [0, 255], [0, 255])])  # fmt: skip
def test_codes_pack_along_the_grouped_axis_first_code_lowest(bits, values, payload):
    line = torch.tensor(values, dtype=torch.float32)
    for group_along, x in (("tokens", line[:, None]), ("channels", line[None, :])):  # [S, d] = [n, 1] or [1, n]
        packed = kq.quantize_reference(x, bits, len(values), group_along)
        expected = torch.tensor(payload, dtype=torch.uint8)
        assert torch.equal(packed.payload.flatten(), expected)  # scale 1, zero 0: the codes are the values
        assert packed.payload.shape == ((len(payload), 1) if group_along == "tokens" else (1, len(payload)))
        assert packed.scale.item() == 1 and packed.zero.item() == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("bits", "group_along", "group"), [(2, "tokens", 32), (4, "channels", 16),
                                                            (8, "tokens", 4), (2, "channels", 128)])  # fmt: skip
def test_byte_counts_are_the_tensors_bytes(dtype, bits, group_along, group):
    shape = (2, 4, 256, 128)
    packed = kq.quantize_reference(torch.zeros(shape, dtype=dtype), bits, group, group_along)
    counted = kq.packed_nbytes(shape, bits, group, group_along, dtype)
    assert packed.nbytes() == counted
    held = [t.numel() * t.element_size() for t in (packed.payload, packed.scale, packed.zero)]
    assert list(counted) == held and counted.total == sum(held)
    assert counted.payload * 8 == torch.Size(shape).numel() * bits


def test_kivi_2_bit_bf16_cache_is_under_a_fifth_of_bf16():
    """The floor decode_attention's docstring counts: 96 bytes a packed token and KV head against bf16's 512."""
    shape = (1, 4, 16256, 128)
    keys, values = (kq.packed_nbytes(shape, 2, 32, along, torch.bfloat16).total for along in kq.GROUP_ALONG)
    assert keys + values == 16256 * 4 * 96 == 6_242_304
    assert (keys + values + 128 * 4 * 512) / (16384 * 4 * 512) < 0.2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", kq.BITS)
@pytest.mark.parametrize("group_along", kq.GROUP_ALONG)
def test_triton_quantize_and_dequantize_match_the_reference(quant_kernels, dtype, bits, group_along):
    quantize, dequantize = quant_kernels
    # odd sizes: 3 heads, 36 tokens, a head dimension of 40, groups of 12 and 20 (not powers of 2)
    group = 12 if group_along == "tokens" else 20
    x = _tensor((2, 3, 36, 40), dtype, 10 + bits, constant_groups=12)
    expected = kq.quantize_reference(x, bits, group, group_along)
    got = quantize(x, bits, group, group_along)
    for name in ("payload", "scale", "zero"):  # the same operations in the same order: the same bits
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert (got.bits, got.group_size, got.group_along) == (bits, group, group_along)
    rtol, atol = (0, 0) if dtype != torch.bfloat16 else (2**-7, 0)  # the interpreter truncates to bf16, torch rounds
    torch.testing.assert_close(dequantize(expected), kq.dequantize_reference(expected), rtol=rtol, atol=atol)


def test_triton_quantize_takes_strided_inputs_and_any_leading_dims(quant_kernels):
    quantize, dequantize = quant_kernels
    x = _tensor((4, 64, 3), torch.float32, 5).transpose(0, 2)  # [3, 64, 4], not contiguous
    for group_along, group in (("tokens", 16), ("channels", 4)):
        expected = kq.quantize_reference(x, 4, group, group_along)
        got = quantize(x, 4, group, group_along)
        assert all(torch.equal(getattr(got, n), getattr(expected, n)) for n in ("payload", "scale", "zero"))
        assert torch.equal(dequantize(got), kq.dequantize_reference(expected))
    empty = torch.zeros(2, 0, 8)
    assert quantize(empty, 2, 4, "tokens").payload.shape == (2, 0, 8)


def test_dispatchers_run_the_reference_on_the_cpu():
    x = _tensor((2, 2, 16, 8), torch.float32, 3)
    packed = kq.quantize(x, 4, 8, "tokens")
    assert torch.equal(packed.payload, kq.quantize_reference(x, 4, 8, "tokens").payload)
    assert torch.equal(kq.dequantize(packed), kq.dequantize_reference(packed))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f(torch.zeros(2, 16, 8), 3, 4, "tokens"), r"bits=3 is not supported: use one of 2, 4, 8"),
        (lambda f: f(torch.zeros(2, 16, 8), 2, 6, "tokens"), r"group_size=6 must be a positive multiple of 4"),
        (lambda f: f(torch.zeros(2, 20, 8), 4, 8, "tokens"), r"group_size=8 does not divide the 20 tokens"),
        (lambda f: f(torch.zeros(2, 16, 12), 4, 8, "channels"), r"group_size=8 does not divide the 12 channels"),
        (lambda f: f(torch.zeros(2, 16, 8), 4, 8, "heads"), r"group_along='heads' is not a layout"),
        (lambda f: f(torch.zeros(2, 16, 8, dtype=torch.int32), 4, 8, "tokens"), r"cannot quantise a torch.int32"),
        (lambda f: f(torch.zeros(16), 4, 8, "tokens"), r"expected a \[\.\.\., S, d\] tensor"),
    ],
)
def test_quantize_refuses_arguments_that_do_not_fit(quant_kernels, call, message):
    for function in (kq.quantize_reference, quant_kernels[0], kq.quantize):
        with pytest.raises(ValueError, match=message):
            call(function)
    with pytest.raises(ValueError, match=message):  # the byte count checks as quantize does
        call(lambda x, *layout: kq.packed_nbytes(tuple(x.shape), *layout, x.dtype))


def test_dequantize_refuses_parts_that_do_not_fit(quant_kernels):
    packed = kq.quantize_reference(torch.zeros(2, 16, 8), 4, 8, "tokens")
    bad = {
        "payload must be uint8": {"payload": packed.payload.to(torch.int32)},
        r"scale \(2, 3, 8\) torch.float32 does not fit the payload": {"scale": torch.zeros(2, 3, 8)},
        r"zero \(2, 2, 8\) torch.float16 does not fit": {"zero": packed.zero.half()},
        "bits=5 is not supported": {"bits": 5},
    }
    for message, change in bad.items():
        broken = kq.PackedKV(**{**packed.__dict__, **change})
        for function in (kq.dequantize_reference, quant_kernels[1]):
            with pytest.raises(ValueError, match=message):
                function(broken)


# name: (B, Hq, Hkv, q, S_packed, S_full, d, key bits, value bits, dtype, validity, split_size)
CASES = {
    "gqa1_fp32": (2, 4, 4, 1, 48, 13, 32, 2, 2, torch.float32, "random", 16),
    "gqa2_bf16_odd_window": (3, 4, 2, 1, 64, 7, 64, 4, 4, torch.bfloat16, "random", 32),
    "gqa4_fp16_head80": (2, 8, 2, 1, 32, 5, 80, 8, 8, torch.float16, "random", None),
    "gqa4_mixed_bits_q3": (2, 8, 2, 3, 96, 11, 32, 2, 4, torch.float32, None, 48),
    "no_window_fp16": (2, 4, 2, 1, 64, 0, 16, 4, 2, torch.float16, "random", 16),
    "no_packed_bf16": (2, 2, 1, 2, 0, 37, 16, 2, 2, torch.bfloat16, "random", 8),
    "all_masked_but_one": (2, 8, 4, 1, 64, 9, 32, 2, 2, torch.float32, "one", 16),
    "padding_and_a_blind_sample": (3, 4, 2, 2, 32, 6, 16, 8, 4, torch.bfloat16, "left_pad_blind", 8),
}


def _decode_inputs(name: str, seed: int) -> tuple[tuple, dict]:
    """Fresh random decode arguments: query, packed key and value, full key and value, scaling; and masks."""
    batch, heads, kv_heads, n_q, n_packed, n_full, dim, k_bits, v_bits, dtype, validity, split = CASES[name]
    gen = torch.Generator().manual_seed(1000 * seed + list(CASES).index(name))
    query = torch.randn(batch, heads, n_q, dim, generator=gen).to(dtype)
    keys, values = (torch.randn(batch, kv_heads, n_packed + n_full, dim, generator=gen).to(dtype) for _ in range(2))
    keys = keys + torch.randn(dim, generator=gen).to(dtype) * 3  # outlier channels, as keys have
    packed_key = kq.quantize_reference(keys[:, :, :n_packed], k_bits, 16, "tokens")
    packed_value = kq.quantize_reference(values[:, :, :n_packed], v_bits, 16, "channels")
    # the window as a cache holds it: a view into a longer buffer (strided batch and head)
    full_key, full_value = keys[:, :, n_packed:], values[:, :, n_packed:]
    masks: dict = {"split_size": split}
    if validity == "random":
        masks["packed_valid"] = torch.rand(batch, n_packed, generator=gen) > 0.3
        masks["full_valid"] = torch.rand(batch, n_full, generator=gen) > 0.3
    elif validity == "one":  # a single valid key per sample, in the packed segment of one and the window of other
        masks["packed_valid"] = torch.zeros(batch, n_packed, dtype=torch.bool)
        masks["full_valid"] = torch.zeros(batch, n_full, dtype=torch.bool)
        masks["packed_valid"][0, 37] = masks["full_valid"][1, n_full - 1] = True
    elif validity == "left_pad_blind":  # left padding of 0, 10 and every entry (a sample with nothing to see)
        masks["packed_valid"] = torch.arange(n_packed).expand(batch, -1) >= torch.tensor([[0], [10], [n_packed]])
        masks["full_valid"] = torch.ones(batch, n_full, dtype=torch.bool)
        masks["full_valid"][2] = False
    return (query, packed_key, packed_value, full_key, full_value, dim**-0.5), masks


def _dense(query, packed_key, packed_value, full_key, full_value, scaling, packed_valid=None, full_valid=None,
           split_size=None) -> torch.Tensor:  # fmt: skip
    """Float64 softmax attention over the whole dequantised cache at once, ``[B, Hq, q, d]``."""
    keys = torch.cat([kq.dequantize_reference(packed_key).double(), full_key.double()], dim=2)
    values = torch.cat([kq.dequantize_reference(packed_value).double(), full_value.double()], dim=2)
    batch, heads = query.shape[:2]
    segments = ((packed_valid, packed_key.shape[2]), (full_valid, full_key.shape[2]))
    valid = torch.cat([torch.ones(batch, n, dtype=torch.bool) if mask is None else mask for mask, n in segments], 1)
    groups = heads // keys.shape[1]
    logits = torch.einsum("bhqd,bhkd->bhqk", query.double(), keys.repeat_interleave(groups, 1)) * scaling
    probs = logits.masked_fill(~valid[:, None, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, values.repeat_interleave(groups, 1))


@pytest.mark.parametrize("name", list(CASES))
def test_reference_equals_a_dense_softmax_over_the_dequantised_cache(name):
    args, masks = _decode_inputs(name, 0)
    got = da.decode_attention_reference(*args, **masks)
    dtype = args[0].dtype
    assert got.shape == args[0].shape and got.dtype == dtype
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (2**-7, 1e-3)  # the output rounded to its dtype
    torch.testing.assert_close(got.double(), _dense(*args, **masks), rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CASES))
def test_triton_decode_matches_the_reference(decode_kernel, name, seed):
    args, masks = _decode_inputs(name, seed)
    expected = da.decode_attention_reference(*args, **masks)
    got = decode_kernel(*args, **masks)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(got.float(), expected.float(), rtol=rtol, atol=atol)


def test_rows_that_see_no_key_get_zeros_and_one_key_gets_its_value(decode_kernel):
    args, masks = _decode_inputs("all_masked_but_one", 0)
    query, packed_key, packed_value, full_key, full_value, scaling = args
    only = [kq.dequantize_reference(packed_value)[0, :, 37], full_value[1, :, -1]]  # [Hkv, d] each
    blind = {**masks, "full_valid": torch.zeros_like(masks["full_valid"])}
    for function in (decode_kernel, da.decode_attention_reference):
        out = function(*args, **masks)  # softmax over one key: that key's value, for every head of its group
        for sample in (0, 1):
            torch.testing.assert_close(out[sample, :, 0], only[sample].repeat_interleave(2, 0), rtol=1e-6, atol=1e-6)
        assert torch.equal(function(*args, **blind)[1], torch.zeros_like(query[1]))


@pytest.mark.parametrize("name", ["gqa4_mixed_bits_q3", "padding_and_a_blind_sample"])
def test_log_sum_exp_and_segments_joined_by_it_equal_one_attention(decode_kernel, name):
    """``return_lse``: each row's log-sum-exp; attention over two segments called apart and joined with
    ``merge_attention`` equals one call over both (what a store with two bit widths does)."""
    args, masks = _decode_inputs(name, 1)
    query, packed_key, packed_value, full_key, full_value, scaling = args
    logits = torch.einsum("bhqd,bhkd->bhqk", query.double(), torch.cat(
        [kq.dequantize_reference(packed_key).double(), full_key.double()], 2).repeat_interleave(
            query.shape[1] // full_key.shape[1], 1)) * scaling  # fmt: skip
    batch = query.shape[0]
    valid = torch.cat([masks.get("packed_valid", torch.ones(batch, packed_key.shape[2], dtype=torch.bool)),
                       masks["full_valid"] if "full_valid" in masks else torch.ones(batch, full_key.shape[2],
                       dtype=torch.bool)], 1)  # fmt: skip
    expected_lse = logits.masked_fill(~valid[:, None, None], float("-inf")).logsumexp(-1)
    no_packed = {"packed_valid": torch.zeros(batch, packed_key.shape[2], dtype=torch.bool)}
    rtol, atol = TOLERANCE[query.dtype]
    for function in (decode_kernel, da.decode_attention_reference):
        whole, lse = function(*args, **masks, return_lse=True)
        # bf16: the kernel dequantises in fp32 registers, the reference rounds dequantised keys to bf16 first
        torch.testing.assert_close(lse.double(), expected_lse, rtol=rtol, atol=max(atol, 1e-4))
        packed_only = function(query, packed_key, packed_value, full_key[:, :, :0], full_value[:, :, :0], scaling,
                               packed_valid=masks.get("packed_valid"), return_lse=True)  # fmt: skip
        full_only = function(*args, **{**no_packed, "full_valid": masks.get("full_valid")}, return_lse=True)
        merged = da.merge_attention([packed_only, full_only])
        torch.testing.assert_close(merged.float(), whole.float(), rtol=rtol, atol=atol)


def test_split_sizes_do_not_change_the_result(decode_kernel):
    args, masks = _decode_inputs("gqa4_mixed_bits_q3", 2)
    expected = da.decode_attention_reference(*args, **masks)
    for split in (24, 1000):  # chunks that end inside a group and a block, one chunk a segment
        got = decode_kernel(*args, **{**masks, "split_size": split})
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_views_into_a_longer_packed_buffer_are_read_in_place(decode_kernel):
    """A preallocated cache hands out the first entries of its buffers: strided views, not copies."""
    (query, packed_key, packed_value, full_key, full_value, scaling), _ = _decode_inputs("gqa4_mixed_bits_q3", 3)

    def first(packed: kq.PackedKV, payload_rows: int, scale_rows: int) -> kq.PackedKV:
        parts = (packed.payload[:, :, :payload_rows], packed.scale[:, :, :scale_rows], packed.zero[:, :, :scale_rows])
        return kq.PackedKV(*parts, packed.bits, packed.group_size, packed.group_along)

    # the first 32 tokens: keys are grouped along tokens (their bytes and scale rows cover several), values not
    key = first(packed_key, 32 * packed_key.bits // 8, 32 // packed_key.group_size)
    value = first(packed_value, 32, 32)
    assert key.shape[2] == value.shape[2] == 32 and not key.payload.is_contiguous()
    args = (query, key, value, full_key, full_value, scaling)
    torch.testing.assert_close(decode_kernel(*args, split_size=16), da.decode_attention_reference(*args))


def test_dispatcher_runs_the_reference_on_the_cpu_and_empty_calls_give_zeros(decode_kernel):
    args, masks = _decode_inputs("gqa1_fp32", 0)
    assert torch.equal(da.decode_attention(*args, **masks), da.decode_attention_reference(*args, **masks))
    query, packed_key, packed_value, full_key, full_value, scaling = args
    empty_packed = kq.quantize_reference(full_key[:, :, :0], 2, 16, "tokens")
    empty_value = kq.quantize_reference(full_value[:, :, :0], 2, 16, "channels")
    nothing = (query, empty_packed, empty_value, full_key[:, :, :0], full_value[:, :, :0], scaling)
    for function in (decode_kernel, da.decode_attention_reference):
        assert torch.equal(function(*nothing), torch.zeros_like(query))


# name: (key bits, layout, group; value bits, layout, group; d, S_packed, S_full, dtype, mask). The packed tile's
# token order follows the tensors packed along tokens (field by field when they pack as many tokens a byte, else in
# order); values read a scale per word when a group holds whole words, else per byte; rows of 4, 2 or 1 bytes read
# as words of that size; lengths that end inside a tile.
LAYOUTS = {
    "kivi_2_bit": (2, "tokens", 16, 2, "channels", 16, 64, 80, 5, torch.bfloat16, True),
    "kivi_4_bit_byte_scales": (4, "tokens", 8, 4, "channels", 4, 32, 72, 3, torch.float16, False),
    "kivi_8_bit": (8, "tokens", 4, 8, "channels", 8, 32, 52, 0, torch.bfloat16, True),
    "kivi_mixed_bits_fp32": (4, "tokens", 12, 2, "channels", 8, 24, 48, 4, torch.float32, True),
    "swapped_layouts": (2, "channels", 8, 4, "tokens", 4, 32, 64, 3, torch.bfloat16, True),
    "both_along_tokens": (2, "tokens", 8, 2, "tokens", 16, 16, 64, 2, torch.float16, False),
    "both_along_tokens_mixed_bits": (2, "tokens", 8, 4, "tokens", 4, 16, 56, 2, torch.float32, True),
    "both_along_channels": (4, "channels", 8, 2, "channels", 16, 48, 40, 3, torch.bfloat16, False),
    "two_byte_value_rows": (2, "tokens", 4, 2, "channels", 4, 8, 40, 1, torch.float16, True),
    "one_byte_value_rows": (4, "tokens", 2, 2, "channels", 12, 12, 38, 2, torch.bfloat16, False),
}


def _layout_inputs(name: str, seed: int) -> tuple[tuple, dict]:
    """Decode arguments (B=2, Hq=6, Hkv=2, q=1) of a ``LAYOUTS`` case, with random validity when it has a mask."""
    k_bits, k_along, k_group, v_bits, v_along, v_group, dim, n_packed, n_full, dtype, mask = LAYOUTS[name]
    gen = torch.Generator().manual_seed(100 * seed + list(LAYOUTS).index(name))
    query = torch.randn(2, 6, 1, dim, generator=gen).to(dtype)
    keys, values = (torch.randn(2, 2, n_packed + n_full, dim, generator=gen) for _ in range(2))
    keys = (keys + torch.randn(dim, generator=gen) * 3).to(dtype)  # outlier channels
    packed_key = kq.quantize_reference(keys[:, :, :n_packed], k_bits, k_group, k_along)
    packed_value = kq.quantize_reference(values[:, :, :n_packed].to(dtype), v_bits, v_group, v_along)
    masks = {}
    if mask:
        masks["packed_valid"] = torch.rand(2, n_packed, generator=gen) > 0.3
        masks["full_valid"] = torch.rand(2, n_full, generator=gen) > 0.3
    full = (keys[:, :, n_packed:], values[:, :, n_packed:].to(dtype))
    return (query, packed_key, packed_value, *full, dim**-0.5), masks


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_triton_decode_matches_the_reference_for_every_layout_and_width(decode_kernel, name):
    args, masks = _layout_inputs(name, 0)
    expected = da.decode_attention_reference(*args, **masks)
    rtol, atol = TOLERANCE[expected.dtype]
    # one chunk; chunks that start and stop inside a tile and a group; one-tile chunks
    for split in (None, 24, 16):
        got = decode_kernel(*args, **masks, split_size=split)
        torch.testing.assert_close(got.float(), expected.float(), rtol=rtol, atol=atol, msg=f"split_size={split}")


def test_payloads_are_read_as_the_widest_words_their_rows_strides_and_offsets_allow(decode_kernel):
    """A payload read 4 bytes at a time unless a row, a stride or the view's offset is not a multiple of 4 (then 2,
    then 1): a cache whose payload rows sit at odd offsets of a wider buffer is read byte by byte."""
    triton_side = importlib.import_module("vlmzip.kernels._decode_attention_triton")
    (query, packed_key, packed_value, full_key, full_value, scaling), masks = _layout_inputs("kivi_2_bit", 1)

    def lanes(packed: kq.PackedKV) -> int:
        return triton_side._packed_args(packed, "K")[1]["K_LANES"]

    def shifted(packed: kq.PackedKV) -> kq.PackedKV:  # the same payload one byte into rows one byte longer
        rows = packed.payload
        buffer = torch.zeros(*rows.shape[:-1], rows.shape[-1] + 1, dtype=torch.uint8)
        buffer[..., 1:] = rows
        return kq.PackedKV(buffer[..., 1:], packed.scale, packed.zero, packed.bits, packed.group_size,
                           packed.group_along)  # fmt: skip

    assert (lanes(packed_key), lanes(packed_value)) == (4, 4)
    assert [lanes(p) for p in _layout_inputs("two_byte_value_rows", 0)[0][1:3]] == [4, 2]
    assert [lanes(p) for p in _layout_inputs("one_byte_value_rows", 0)[0][1:3]] == [4, 1]
    key, value = shifted(packed_key), shifted(packed_value)
    assert (lanes(key), lanes(value)) == (1, 1) and not key.payload.is_contiguous()
    args = (query, key, value, full_key, full_value, scaling)
    expected = da.decode_attention_reference(query, packed_key, packed_value, full_key, full_value, scaling, **masks)
    torch.testing.assert_close(decode_kernel(*args, **masks, split_size=24).float(), expected.float(),
                               rtol=1e-2, atol=1e-2)  # fmt: skip


def test_a_query_group_wider_than_a_tile_of_rows_and_a_single_row(decode_kernel):
    """Query tiles hold at least 8 rows: one row (multi-head attention) pads, 12 rows take a tile of 16."""
    for heads, n_q in ((2, 1), (6, 4)):
        (query, *rest), masks = _layout_inputs("kivi_2_bit", 2)
        query = torch.randn(2, heads, n_q, query.shape[-1]).to(query.dtype)
        args = (query, *rest)
        expected = da.decode_attention_reference(*args, **masks)
        torch.testing.assert_close(decode_kernel(*args, **masks, split_size=32).float(), expected.float(),
                                   rtol=1e-2, atol=1e-2)  # fmt: skip


def _refusal_args(**change) -> tuple[tuple, dict]:
    """Decode arguments that fit (B=2, Hq=4, Hkv=2, q=1, S_packed=16, S_full=3, d=16), with ``change`` applied."""
    fitting = {
        "query": torch.zeros(2, 4, 1, 16),
        "packed_key": kq.quantize_reference(torch.zeros(2, 2, 16, 16), 2, 8, "tokens"),
        "packed_value": kq.quantize_reference(torch.zeros(2, 2, 16, 16), 2, 8, "channels"),
        "full_key": torch.zeros(2, 2, 3, 16),
        "full_value": torch.zeros(2, 2, 3, 16),
        "scaling": 0.25,
        **change,
    }
    names = ("query", "packed_key", "packed_value", "full_key", "full_value", "scaling")
    return tuple(fitting.pop(name) for name in names), fitting


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query": torch.zeros(2, 4, 16)}, r"query must be a \[B, Hq, q, d\]"),
        ({"query": torch.zeros(2, 4, 1, 16, dtype=torch.float64)}, r"bf16, fp16 or fp32 tensor"),
        ({"full_key": torch.zeros(2, 3, 3, 16), "full_value": torch.zeros(2, 3, 3, 16)}, "key heads dividing"),
        ({"full_value": torch.zeros(2, 2, 4, 16)}, "of one shape"),
        ({"full_key": torch.zeros(2, 2, 3, 16).half(), "full_value": torch.zeros(2, 2, 3, 16).half()},
         "must have the query's dtype torch.float32"),
        ({"packed_key": torch.zeros(2, 2, 16, 16)}, r"packed_key must be a kv_quant.PackedKV"),
        ({"packed_key": kq.quantize_reference(torch.zeros(2, 2, 8, 16), 2, 8, "tokens")},
         r"packed_key \(2, 2, 8, 16\) and packed_value \(2, 2, 16, 16\) must hold the same entries"),
        ({"packed_value": kq.quantize_reference(torch.zeros(2, 1, 16, 16), 2, 8, "channels")},
         r"packed_value holds \(2, 1, 16, 16\), expected \[2, 2, S_packed, 16\]"),
        ({"packed_valid": torch.ones(2, 15, dtype=torch.bool)}, r"packed_valid must be a bool \[2, 16\]"),
        ({"full_valid": torch.ones(2, 3)}, r"full_valid must be a bool \[2, 3\]"),
        ({"split_size": 0}, "split_size=0 must be a positive number of keys"),
    ],
)  # fmt: skip
def test_decode_attention_refuses_arguments_that_do_not_fit(decode_kernel, change, message):
    args, masks = _refusal_args(**change)
    for function in (da.decode_attention_reference, decode_kernel, da.decode_attention):
        with pytest.raises(ValueError, match=message):
            function(*args, **masks)


def test_the_decode_bench_parses_its_arguments_and_runs_on_the_cpu(capsys):
    """``python -m vlmzip.kernels.bench decode`` times the kernel on a GPU; here a tiny CPU run of the reference
    so that the code cannot rot."""
    args = bench.parser().parse_args(["decode", "--bits", "4", "--context", "4096"])
    assert (args.what, args.bits, args.context) == ("decode", 4, 4096)
    with pytest.raises(SystemExit):
        bench.parser().parse_args(["decode", "--bits", "3"])
    rows = bench.decode_bench(batch_sizes=(1, 2), context=70, window=9, heads=4, kv_heads=2, dim=16, bits=4,
                              group_size=8, device="cpu", dtype=torch.float32, repeats=1)  # fmt: skip
    assert [(row["batch"], row["path"]) for row in rows] == [(1, "packed"), (1, "sdpa"), (2, "packed"), (2, "sdpa")]
    assert all(row["diff"] < 1e-5 for row in rows)
    # 56 packed tokens (7 groups of 8) and a window of 14 per KV head: bytes as packed_nbytes counts them
    packed = 2 * kq.packed_nbytes((1, 2, 56, 16), 4, 8, "tokens", torch.float32).total
    assert rows[0]["bytes"] == packed + 2 * 2 * 14 * 16 * 4 + 2 * 4 * 16 * 4
    assert rows[1]["bytes"] == 2 * 2 * 70 * 16 * 4 + 2 * 4 * 16 * 4
    assert "packed" in capsys.readouterr().out
