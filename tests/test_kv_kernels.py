"""KV quantisation: the reference against its definition (error bounds, bit layout, exact bytes), the Triton
kernels against the reference under Triton's interpreter on the CPU (tests/conftest.py sets ``TRITON_INTERPRET=1``
before any import), and bad arguments."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from vlmzip.kernels import kv_quant as kq

# Triton 3.6's interpreter converts loop bounds with int(array), which numpy 2.3 only warns about
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
