"""`vlmzip bench` on tiny architectures (CPU): every policy measured against the unwrapped model."""

from __future__ import annotations

import json

import pytest
import torch

import vlmzip
from vlmzip.cli import main
from vlmzip.eval.bench import UNWRAPPED, Workload, build, run


def test_bench_measures_every_policy_and_reports_what_was_kept():
    model = build("tiny-qwen2_5_vl", device="cpu", dtype=torch.float32)
    workload = Workload(images=1, frames=4, frame_patches=8, text_tokens=6)
    results = run(model, ["uniform:keep=0.25", "fastv:layer=2,keep=0.5"], [2], workload, new_tokens=3, repeats=1)
    assert [r.policy for r in results] == [UNWRAPPED, "none", "uniform:keep=0.25", "fastv:layer=2,keep=0.5"]
    unwrapped, none, uniform, fastv = results
    assert none.visual_tokens_in == [48, 48]  # an image (16) and a 4-frame video (2 x 16) per sample
    assert uniform.visual_tokens_kept == {"vision": [12, 12]}
    assert fastv.visual_tokens_kept == {"prefill": [24, 24]}
    assert uniform.kv_bytes < none.kv_bytes and unwrapped.kv_bytes == 0
    for result in results:
        assert result.vision_ms > 0 and result.lm_prefill_ms > 0 and result.first_decode_ms > 0
        assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0
    assert vlmzip.policy_of(model) is None  # every measurement restores the model


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
