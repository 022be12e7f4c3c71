"""`vlmzip bench` on tiny architectures (CPU): every policy measured against the unwrapped model."""

from __future__ import annotations

import json

import pytest
import torch

import vlmzip
from vlmzip.cli import main
from vlmzip.eval import bench
from vlmzip.eval.bench import UNWRAPPED, Workload, build, ideal_label, run
from vlmzip.registry import adapter_for


def test_bench_measures_every_policy_and_reports_what_was_kept():
    model = build("tiny-qwen2_5_vl", device="cpu", dtype=torch.float32)
    workload = Workload(images=1, frames=4, frame_patches=8, text_tokens=6)
    policies = ["uniform:keep=0.25", "fastv:layer=2,keep=0.5"]
    results = run(
        model, policies, [2], workload, new_tokens=3, repeats=1, ideal=[12], ideal_at_equivalent=True, hf_caches=["fp8"]
    )
    # the ideal at 12 tokens stands for uniform's too; FastV's 36 equivalent tokens get their own
    fp8 = f"{UNWRAPPED} hf-cache fp8"
    assert [r.policy for r in results] == [UNWRAPPED, fp8, ideal_label(12), "none", *policies, ideal_label(36)]
    unwrapped, hf_fp8, ideal, none, uniform, fastv, fastv_ideal = results
    assert none.visual_tokens_in == [48, 48]  # an image (16) and a 4-frame video (2 x 16) per sample
    assert uniform.visual_tokens_kept == {"vision": [12, 12]}
    assert fastv.visual_tokens_kept == {"prefill": [24, 24]}
    assert uniform.kv_bytes < none.kv_bytes == unwrapped.kv_bytes  # the same prompts: no padding to count
    scales = 2 * 4 * 4  # transformers' fp8 cache: a key and a value fp32 scale a layer
    assert hf_fp8.kv_bytes == unwrapped.kv_bytes // 4 + scales  # fp32 entries stored as one byte each
    # the mean over the 4 layers: all 48 in layers 0-1, 24 from layer 2 on
    assert [r.equivalent_visual_tokens for r in results] == [48, 48, 12, 48, 12, 36, 36]
    for result in [unwrapped, none, uniform, fastv]:
        assert result.vision_ms > 0 and result.lm_prefill_ms > 0 and result.first_decode_ms > 0
        assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0
    assert ideal.prefill_ms > 0 and ideal.vision_ms > 0 and ideal.lm_prefill_ms > 0 and ideal.first_token_ms is None
    assert fastv_ideal.visual_tokens_kept == {"ideal": [36, 36]}
    assert vlmzip.policy_of(model) is None  # every measurement restores the model


def test_bench_reports_the_attention_density_a_sparse_prefill_reached():
    model = build("tiny-qwen2_5_vl", device="cpu", dtype=torch.float32)
    workload = Workload(images=0, frames=8, frame_patches=8, text_tokens=80)  # ~150 tokens: ten 16-row blocks
    sparse = "xattention:min_length=0,block=16,threshold=0.3,stride=4"
    unwrapped, none, result = run(model, [sparse], [1], workload, new_tokens=2, repeats=1)
    assert unwrapped.attention_density == none.attention_density == 1.0
    assert 0 < result.attention_density < 1.0 and result.visual_tokens_kept == {}


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2_5_vl", "tiny-gemma3"])
def test_ideal_is_the_language_model_on_the_shortened_prompt(arch):
    """The ideal row's prompt pass equals the unwrapped language model called on the text and first N visual
    embeddings alone, with no mask but the causal one (Gemma-3's bidirectional image blocks are gone too)."""
    model = build(arch, device="cpu", dtype=torch.float32)
    inputs = Workload(images=1, frame_patches=8, text_tokens=6).inputs(model, 2)
    language_model, seen = adapter_for(model).language_model, {}

    def capture(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)  # the merged embeddings the language model receives
        handle.remove()
        positions = bench.shortened_positions(bench.visual_mask(model, inputs), 5)
        assert positions.shape == (2, inputs["input_ids"].shape[1] - 16 + 5)  # 16 visual tokens an image
        with bench._Shortened(model, positions, inputs["input_ids"].shape[1]):
            ideal = model(**inputs, use_cache=True, output_hidden_states=True)
        short = seen["embeds"].gather(1, positions[..., None].expand(-1, -1, seen["embeds"].shape[-1]))
        expected = language_model(inputs_embeds=short).last_hidden_state
    assert ideal.past_key_values.get_seq_length() == positions.shape[1]
    torch.testing.assert_close(ideal.hidden_states[-1], expected)
    with pytest.raises(vlmzip.VlmzipError, match="--ideal 17: the samples have 16 visual tokens each"):
        bench.shortened_positions(bench.visual_mask(model, inputs), 17)


def test_bench_command_writes_results(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--arch",
            "tiny-llava",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--repeats",
            "1",
            "--new-tokens",
            "2",
            "--policy",
            "vtc-cls:keep=0.25",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["batch", "policy"] and len(lines) == 4
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [r["policy"] for r in payload["results"]] == [UNWRAPPED, "none", "vtc-cls:keep=0.25"]
    assert payload["versions"]["transformers"] and payload["config"]["arch"] == "tiny-llava"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "llava-99b"], "unknown architecture 'llava-99b'"),
        (["--arch", "tiny-llava", "--policy", "fastv:keep=3.0"], "keep=3.0 is out of range"),
    ],
)
def test_bench_rejects_bad_input(args, message, capsys):
    assert main(["bench", "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err


def test_sparse_selection_bench_times_each_method_against_sdpa(capsys):
    from vlmzip.eval import sparse_select

    policies = ["minference:block=16,vertical=40,slash=8", "xattention:block=16,stride=4", "flexprefill:block=16"]
    argv = ["--length", "200", "--heads", "4", "--kv-heads", "2", "--dim", "8", "--dtype", "float32", "--repeats", "1"]
    assert sparse_select.main([*argv, *(arg for p in policies for arg in ("--policy", p))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" 200 " in line for line in lines[1:])
    row = sparse_select.measure(policies[0], 200, 4, 2, 8, "cpu", torch.float32, 1)
    assert row["select_ms"] > 0 and row["sdpa_ms"] > 0 and 0 < row["density"] < 1
    with pytest.raises(vlmzip.PolicyError, match="is not a sparse-prefill method"):
        sparse_select.measure("fastv", 200, 4, 2, 8, "cpu", torch.float32, 1)
