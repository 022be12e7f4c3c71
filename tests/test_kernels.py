"""The attention-mass kernel against its reference, run by Triton's interpreter on the CPU; the reference against a
dense softmax; and the runtime's scores through the kernel against its CPU path."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.kernels import attention_mass as am
from vlmzip.registry import adapter_for

# Triton 3.6's interpreter converts loop bounds with int(array), which numpy 2.3 only warns about
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(scope="module")
def kernel():
    """``attention_mass_triton``, run by Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``)."""
    if sys.platform != "linux":
        pytest.skip("Triton ships Linux wheels only")
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    triton_side = importlib.import_module("vlmzip.kernels._attention_mass_triton")
    if not (triton_side.INTERPRETED and isinstance(standard.cdiv, InterpretedFunction)):
        pytest.fail("Triton was imported before TRITON_INTERPRET=1 was set: set it before anything imports torch")
    return am.attention_mass_triton


# name: (B, H, Hkv, Q, K, d, dtype, masks, scaling); odd lengths, GQA 1/2/4, head dims 16/32/64/80
CASES = {
    "plain": (2, 4, 4, 37, 70, 16, torch.float32, (), 0.25),
    "one_row_gqa2_bf16": (3, 4, 2, 1, 131, 64, torch.bfloat16, ("last_row",), 0.125),
    "gqa4_head80_fp16": (2, 8, 2, 20, 45, 80, torch.float16, ("key_valid",), 0.11),
    "causal_window": (2, 4, 2, 70, 70, 16, torch.float32, ("causal", "window", "key_valid"), 0.25),
    "unsorted_positions": (2, 2, 1, 21, 40, 16, torch.float32, ("random_positions",), 0.25),
    "windows_as_segments_bf16": (2, 4, 1, 131, 131, 16, torch.bfloat16, ("sorted_segments",), 0.25),
    "unsorted_segments": (1, 2, 2, 37, 50, 16, torch.float32, ("random_segments",), 0.25),
    "dense_bool_per_head": (2, 4, 2, 9, 70, 32, torch.float32, ("bool_mask",), 0.18),
    "dense_additive_fp16": (2, 4, 4, 9, 37, 16, torch.float16, ("float_mask",), 0.25),
    "softcap_bf16": (2, 4, 2, 17, 70, 64, torch.bfloat16, ("softcap",), 0.5),
    "everything": (
        2,
        4,
        2,
        40,
        70,
        16,
        torch.float32,
        ("causal", "window", "key_valid", "sorted_segments", "shared_bool_mask", "softcap"),
        0.25,
    ),  # fmt: skip
    "peaked_logits": (1, 2, 1, 33, 150, 16, torch.float32, (), 4.0),  # the row maximum moves between key blocks
}


def _inputs(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, float, dict]:
    """Fresh random query, key, scaling and mask arguments for a case."""
    batch, heads, kv_heads, n_q, n_k, dim, dtype, masks, scale = CASES[name]
    gen = torch.Generator().manual_seed(1000 * seed + list(CASES).index(name))
    query = torch.randn(batch, heads, n_q, dim, generator=gen).to(dtype)
    key = torch.randn(batch, kv_heads, n_k, dim, generator=gen).to(dtype)
    args: dict = {}
    if "last_row" in masks:
        args["query_positions"] = torch.full((batch, 1), n_k - 1)
    if "causal" in masks:
        args["query_positions"] = torch.arange(n_k - n_q, n_k).expand(batch, n_q)
    if "random_positions" in masks:  # -1: a row that sees no key
        args["query_positions"] = torch.randint(-1, n_k, (batch, n_q), generator=gen)
    if "window" in masks:
        args["window"] = int(torch.randint(1, n_k // 2, (1,), generator=gen))
    if "key_valid" in masks:
        args["key_valid"] = torch.rand(batch, n_k, generator=gen) > 0.25
    if "sorted_segments" in masks:  # chunks of 1-40 rows, like cu_seqlens windows; queries are the last rows
        ids = torch.repeat_interleave(torch.arange(n_k), torch.randint(1, 41, (n_k,), generator=gen))[:n_k]
        args["query_segments"], args["key_segments"] = ids[n_k - n_q :].expand(batch, -1), ids.expand(batch, -1)
    if "random_segments" in masks:
        args["query_segments"] = torch.randint(0, 3, (batch, n_q), generator=gen, dtype=torch.int32)
        args["key_segments"] = torch.randint(0, 3, (batch, n_k), generator=gen, dtype=torch.int32)
    if "bool_mask" in masks:
        args["mask"] = torch.rand(batch, heads, n_q, n_k, generator=gen) > 0.3
    if "shared_bool_mask" in masks:  # one mask for every head
        args["mask"] = torch.rand(batch, 1, n_q, n_k, generator=gen) > 0.3
    if "float_mask" in masks:
        args["mask"] = (torch.randn(1, 1, n_q, n_k, generator=gen) * 3).to(dtype)
    if "softcap" in masks:
        args["softcap"] = 5.0
    return query, key, scale, args


def _dense(query, key, scaling, softcap=None, query_positions=None, window=None, key_valid=None,
           query_segments=None, key_segments=None, mask=None) -> torch.Tensor:  # fmt: skip
    """Head-averaged probabilities ``[B, Q, K]`` in float64 from the whole visibility matrix at once."""
    logits = _masked_logits(query, key, scaling, softcap, query_positions, window, key_valid, query_segments,
                            key_segments, mask)  # fmt: skip
    return logits.softmax(-1).nan_to_num(0.0).mean(dim=1)


def _log_normalizer(query, key, scaling, softcap=None, query_positions=None, window=None, key_valid=None,
                    query_segments=None, key_segments=None, mask=None) -> torch.Tensor:  # fmt: skip
    """Each row's log-sum-exp over its visible keys, per head ``[B, H, Q]``, as an attention call reports it."""
    logits = _masked_logits(query, key, scaling, softcap, query_positions, window, key_valid, query_segments,
                            key_segments, mask)  # fmt: skip
    return logits.logsumexp(-1).float()


def _masked_logits(query, key, scaling, softcap, query_positions, window, key_valid, query_segments, key_segments,
                   mask) -> torch.Tensor:  # fmt: skip
    """``[B, H, Q, K]`` float64 logits, ``-inf`` where a key is not visible."""
    groups = query.shape[1] // key.shape[1]
    logits = torch.einsum("bhqd,bhkd->bhqk", query.double(), key.double().repeat_interleave(groups, 1)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if mask is not None and mask.dtype != torch.bool:
        logits = logits + mask.double()
    batch, heads, n_q = query.shape[:3]
    columns = torch.arange(key.shape[2])
    visible = torch.ones(batch, heads, n_q, key.shape[2], dtype=torch.bool)
    if query_positions is not None:
        visible &= (columns <= query_positions[..., None])[:, None]
        if window is not None:
            visible &= (query_positions[..., None] - columns < window)[:, None]
    if key_valid is not None:
        visible &= key_valid[:, None, None, :]
    if query_segments is not None:
        visible &= (query_segments[..., None] == key_segments[:, None, :])[:, None]
    if mask is not None and mask.dtype == torch.bool:
        visible &= mask
    return logits.masked_fill(~visible, float("-inf"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["plain", "causal_window", "unsorted_positions", "windows_as_segments_bf16",
                                  "dense_additive_fp16", "everything"])  # fmt: skip
def test_reference_equals_a_dense_softmax(name, seed):
    query, key, scale, args = _inputs(name, seed)
    expected = _dense(query, key, scale, **args)
    probs = am.attention_mass_reference(query, key, scale, per_query=True, chunk_size=8, **args)
    torch.testing.assert_close(probs, expected.float(), rtol=1e-5, atol=1e-6)
    mass = am.attention_mass_reference(query, key, scale, reduce="sum", chunk_size=8, **args)
    torch.testing.assert_close(mass, expected.sum(dim=1).float(), rtol=1e-5, atol=1e-5)
    mean = am.attention_mass_reference(query, key, scale, chunk_size=1024, **args)
    torch.testing.assert_close(mean, expected.mean(dim=1).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(kernel, name, seed):
    query, key, scale, args = _inputs(name, seed)
    reduce = ("mean", "sum")[seed % 2]
    for per_query in (False, True):
        got = kernel(query, key, scale, per_query=per_query, reduce=reduce, **args)
        expected = am.attention_mass_reference(query, key, scale, per_query=per_query, reduce=reduce, **args)
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["plain", "causal_window", "softcap_bf16", "dense_additive_fp16", "everything"])
def test_a_given_log_normalizer_replaces_the_first_pass(kernel, name):
    query, key, scale, args = _inputs(name, 3)
    lse = _log_normalizer(query, key, scale, **args)
    for per_query in (False, True):
        expected = am.attention_mass_reference(query, key, scale, per_query=per_query, **args)
        for function in (kernel, am.attention_mass_reference):
            got = function(query, key, scale, per_query=per_query, log_normalizer=lse, **args)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["plain", "windows_as_segments_bf16", "everything"])
def test_every_tile_shape_gives_the_reference(kernel, name):
    """The wide tiles chosen for thousands of rows, and uneven ones, on inputs small enough to interpret."""
    triton_side = importlib.import_module("vlmzip.kernels._attention_mass_triton")
    query, key, scale, args = _inputs(name, 4)
    masks = {"softcap": None, "query_positions": None, "window": None, "key_valid": None, "query_segments": None,
             "key_segments": None, "mask": None, **args}  # fmt: skip
    wide = triton_side.Tiles(128, 64, warps=8, stages=2)
    for tiles in ((wide, wide), (triton_side.Tiles(16, 32), triton_side.Tiles(32, 16))):
        for per_query in (False, True):
            got = triton_side.launch(query, key, scale, per_query=per_query, reduce="mean", tiles=tiles, **masks)
            expected = am.attention_mass_reference(query, key, scale, per_query=per_query, **args)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rows_that_see_no_key_contribute_zeros(kernel):
    query, key, scale, args = _inputs("causal_window", 0)
    args["key_valid"] = args["key_valid"].clone()
    args["key_valid"][1] = False  # the second sample sees nothing at all
    args["query_positions"] = args["query_positions"].clone()
    args["query_positions"][0, :5] = -1  # nor do five rows of the first
    blind = _dense(query, key, scale, **args).sum(dim=-1) == 0
    assert blind[1].all() and blind[0, :5].all() and not blind[0].all()
    for function in (kernel, am.attention_mass_reference):
        probs = function(query, key, scale, per_query=True, **args)
        assert probs[blind].abs().max() == 0
        torch.testing.assert_close(probs[~blind].sum(dim=-1), torch.ones(int((~blind).sum())))
        mass = function(query, key, scale, reduce="sum", **args)
        torch.testing.assert_close(mass, probs.sum(dim=1), rtol=1e-5, atol=1e-6)


def test_one_rows_probabilities_are_its_mass(kernel):
    query, key, scale, args = _inputs("one_row_gqa2_bf16", 0)
    for function in (kernel, am.attention_mass_reference):
        probs = function(query, key, scale, per_query=True, **args)
        assert torch.equal(probs[:, 0], function(query, key, scale, **args))


def test_empty_calls_give_what_the_reference_gives(kernel):
    query, key = torch.randn(2, 4, 0, 16), torch.randn(2, 2, 5, 16)
    expected = am.attention_mass_reference(query, key, 0.3, per_query=True)
    assert torch.equal(kernel(query, key, 0.3, per_query=True), expected) and expected.shape == (2, 0, 5)
    assert torch.equal(kernel(query, key, 0.3, reduce="sum"), torch.zeros(2, 5))


@pytest.mark.parametrize("layout", ["causal", "causal_window", "windows", "unsorted"])
def test_block_ranges_visit_every_visible_tile_and_for_sorted_layouts_no_other(layout):
    gen = torch.Generator().manual_seed(7)
    batch, n_k = 2, 200
    if layout == "windows":  # self-attention within chunks of 1-60 rows
        for _ in range(5):
            ids = torch.repeat_interleave(torch.arange(n_k), torch.randint(1, 61, (n_k,), generator=gen))[:n_k]
            _check_ranges(n_k, n_k, query_segments=ids.expand(batch, -1), key_segments=ids.expand(batch, -1))
    elif layout == "unsorted":
        positions = torch.randint(-1, n_k, (batch, 150), generator=gen)
        segments = torch.randint(0, 4, (batch, 150), generator=gen), torch.randint(0, 4, (batch, n_k), generator=gen)
        _check_ranges(150, n_k, exact=False, query_positions=positions, window=50, query_segments=segments[0],
                      key_segments=segments[1])  # fmt: skip
    else:  # every window size and query count up to the blocks' sizes: each block edge meets each row's
        for n_q, window in (
            [(n_q, None) for n_q in range(130, 162)]
            if layout == "causal"
            else [(150, window) for window in range(1, 34)]
        ):
            _check_ranges(n_q, n_k, query_positions=torch.arange(n_k - n_q, n_k).expand(batch, n_q), window=window)


def _check_ranges(n_q: int, n_k: int, exact: bool = True, **args) -> None:
    """The kernel's block ranges (16 queries by 32 keys) against the tiles the masks ``args`` leave visible."""
    triton_side = importlib.import_module("vlmzip.kernels._attention_mass_triton")
    batch, block_q, block_k = 2, 16, 32
    visible = _dense(torch.zeros(batch, 1, n_q, 1), torch.zeros(batch, 1, n_k, 1), 1.0, **args) > 0
    padded = torch.nn.functional.pad(visible, (0, -n_k % block_k, 0, -n_q % block_q))
    tiles = padded.view(batch, -(-n_q // block_q), block_q, -(-n_k // block_k), block_k).any(dim=(2, 4))
    positions, window = args.get("query_positions"), args.get("window")
    segments = (args["query_segments"], args["key_segments"]) if "query_segments" in args else None
    ranges = (n_q, n_k, positions, window, segments, batch, "cpu", block_q, block_k)
    lo, hi = triton_side._key_block_ranges(*ranges)
    key_blocks = torch.arange(tiles.shape[2])
    by_query_block = (key_blocks >= lo[..., None]) & (key_blocks < hi[..., None])
    lo, hi = triton_side._query_block_ranges(*ranges)
    query_blocks = torch.arange(tiles.shape[1])[:, None]
    by_key_block = (query_blocks >= lo[:, None, :]) & (query_blocks < hi[:, None, :])
    assert tiles.any() and not tiles.all()
    for visited in (by_query_block, by_key_block):
        assert (visited | ~tiles).all()  # every visible tile is visited
        assert torch.equal(visited, tiles) or not exact  # and, for sorted layouts, no other


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": torch.zeros(2, 3, 9, 16)}, "key heads dividing"),
        ({"key": torch.zeros(2, 2, 9, 8)}, "same batch and head dimension"),
        ({"window": 4}, "needs query_positions"),
        ({"query_positions": torch.zeros(2, 5)}, "integer"),
        ({"query_positions": torch.zeros(2, 4, dtype=torch.long)}, r"\[2, 5\]"),
        ({"key_valid": torch.ones(2, 9, dtype=torch.long)}, "bool"),
        ({"query_segments": torch.zeros(2, 5, dtype=torch.long)}, "come together"),
        ({"mask": torch.ones(2, 3, 5, 9, dtype=torch.bool)}, "does not broadcast"),
        ({"mask": torch.ones(2, 1, 5, 9, dtype=torch.long)}, "additive float"),
        ({"reduce": "max"}, "reduce"),
        ({"log_normalizer": torch.zeros(2, 4, 4)}, r"log_normalizer must be a float \[2, 4, 5\]"),
    ],
)
def test_arguments_that_do_not_fit_are_refused(change, message):
    args = {"query": torch.zeros(2, 4, 5, 16), "key": torch.zeros(2, 2, 9, 16), "scaling": 0.25, **change}
    with pytest.raises(ValueError, match=message):
        am.attention_mass_reference(**args)
    with pytest.raises(ValueError, match=message):
        am.attention_mass_triton(**args)


def _packed_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """A flash-style backend: the whole packed ``[1, H, S, d]`` sequence in one call, chunks in ``cu_seq_lens_q``."""
    lengths = kwargs["cu_seq_lens_q"].diff().tolist()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    parts = [sdpa(q, k, v, scale=scaling) for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=2).transpose(1, 2), None


def _vision_signals(family: str, backend: str) -> tuple[list[torch.Tensor], list[set[str]], int]:
    """The vision-attention signal of every item, the keyword arguments of each mass computation the vision stage
    ran, and the number of (tower forward, layer) pairs it scored."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    import vlmzip.runtime.vision as vision

    model = tiny_model(family)
    if backend == "packed":
        AttentionInterface.register("test_flash_packed", _packed_attention)
        AttentionMaskInterface.register("test_flash_packed", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        model.set_attn_implementation({"vision_config": "test_flash_packed"})
    videos = [4, 2] if family.startswith("qwen") else None
    inputs = random_inputs(model, [1, 2], text_lengths=[3, 5], video_frames=videos)
    adapter_class, signals, calls, layers = type(adapter_for(model)), [], [], []
    original_scores, original_mass = adapter_class.vision_scores, vision.attention_mass

    def spy(self, runs, items):
        original_scores(self, runs, items)
        signals.extend(item.signals["vision_attention"] for item in items)
        layers.append(sum(len(run.attention) for run in runs))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapter_class, "vision_scores", spy)
        patch.setattr(vision, "attention_mass", lambda *a, **k: calls.append(set(k)) or original_mass(*a, **k))
        vlmzip.compress(model, "vtc-cls:keep=0.5,layers=2")
        with torch.no_grad():
            model(**inputs)
    return signals, calls, sum(layers)


def _through_kernel(monkeypatch) -> list[int]:
    """Make scoring run the kernel on CPU tensors (as on CUDA ones); returns the list its runs append to."""
    runs, kernel = [], am.attention_mass_triton
    monkeypatch.setattr("vlmzip.scoring.uses_kernel", lambda tensor: True)
    monkeypatch.setattr("vlmzip.scoring.attention_mass_triton", lambda *a, **k: runs.append(1) or kernel(*a, **k))
    return runs


# not named family/backend: conftest parametrises those over every family and backend
@pytest.mark.parametrize(("tower", "attention"), [("qwen2_5_vl", "sdpa"), ("qwen2_5_vl", "packed"),
                                                  ("gemma3", "sdpa"), ("llava", "sdpa")])  # fmt: skip
def test_vision_scores_through_the_kernel_match_the_cpu_path(kernel, tower, attention, monkeypatch):
    expected, _, _ = _vision_signals(tower, attention)
    runs = _through_kernel(monkeypatch)
    monkeypatch.setattr("vlmzip.runtime.vision.uses_kernel", lambda tensor: True)
    got, calls, layers = _vision_signals(tower, attention)
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(runs) == len(calls) == layers  # one kernel run per scored layer of each tower forward
    if tower.startswith("qwen"):  # however many frames or windows, told apart by segment ids
        assert all("query_segments" in call for call in calls)


# the mask each language model's first layers get under sdpa for one unpadded prompt: none (causal: passed as
# positions) or Gemma-3's 4D mask with bidirectional image blocks (passed dense)
@pytest.mark.parametrize(("language_model", "mask"), [("llava", "query_positions"), ("qwen2_5_vl", "query_positions"),
                                                      ("gemma3", "mask")])  # fmt: skip
def test_prefill_scores_through_the_kernel_match_the_cpu_path(kernel, language_model, mask, monkeypatch):
    import vlmzip.runtime.attention as attention
    import vlmzip.runtime.prefill as prefill

    def captured() -> tuple[list[torch.Tensor], set[str]]:
        model, probs, masks = tiny_model(language_model), [], set()
        original_probs, original_query = attention.attention_probs, prefill.query_attention

        def recording(*args, **kwargs):
            masks.update(name for name, value in kwargs.items() if value is not None)
            return original_probs(*args, **kwargs)

        def spy(*args):
            result = original_query(*args)
            probs.append(result.probs)
            return result

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attention, "attention_probs", recording)
            patch.setattr(prefill, "query_attention", spy)
            vlmzip.compress(model, "fastv:layer=2,keep=0.5")
            with torch.no_grad():
                model(**random_inputs(model, [1], text_lengths=[6]))
        return probs, masks

    expected, masks = captured()
    assert len(expected) == 1 and mask in masks
    runs = _through_kernel(monkeypatch)
    got, _ = captured()
    assert len(got) == len(runs) == 1
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
