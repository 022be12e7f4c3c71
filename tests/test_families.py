"""The model-family registry (``vlmzip.eval.families``): every list of models derives from it, and the configs its
families build are exactly those the tests, benchmarks and shipped fixtures were made with."""

from __future__ import annotations

import hashlib
import json

import pytest

from vlmzip.eval import bench, bundled, families, fixtures, tiny
from vlmzip.registry import adapter_for


def _digest(config) -> str:
    """A config's fields, hashed; the transformers version it records is left out."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "transformers_version"}
        return value

    return hashlib.sha256(json.dumps(strip(config.to_dict()), sort_keys=True).encode()).hexdigest()[:16]


def test_every_list_of_models_comes_from_the_registry():
    registered = families.families()
    assert [f.name for f in registered] == ["llava", "qwen_vl", "gemma3", "llava_next"]
    assert tiny.FAMILIES == (
        "llava",
        "llava_gemma3",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "gemma3",
        "llava_next",
        "llava_onevision",
    )
    assert tuple(name for f in registered for name in f.tiny) == tiny.FAMILIES
    assert list(bench.ARCHS) == ["llava-1.5-7b", "qwen2.5-vl-7b", "gemma-3-4b", "llava-next-7b", "llava-onevision-7b"]
    assert list(bench.TINY_ARCHS) == [f"tiny-{name}" for name in tiny.FAMILIES]
    assert fixtures.FAMILIES == bundled.MODELS == ("llava", "qwen2_5_vl", "gemma3")


def test_a_name_has_one_home():
    llava = families.families()[0]
    with pytest.raises(ValueError, match="model family 'llava' is registered already"):
        families.register(llava)
    with pytest.raises(ValueError, match="tiny model llava, llava_gemma3 of 'other' belongs to another family"):
        families.register(families.Family("other", tiny=llava.tiny))
    with pytest.raises(ValueError, match="unknown family 'mamba'; expected one of llava, qwen2_5_vl, gemma3"):
        families.fixture_family("mamba")


def test_every_tiny_model_has_an_adapter(family):
    adapter_for(tiny.tiny_model(family))  # raises for a family vlmzip cannot compress


# Digests of the configs as they were when each family's configs still lived in tiny.py, bench.py and fixtures.py:
# moving a family's code must not change what it builds. A change meant to alter a config updates its digest.
TINY_CONFIGS = {
    "llava": "ac9076bfc4cfa531",
    "llava_gemma3": "43f7ef91759cc617",
    "qwen2_vl": "55638043319d0321",
    "qwen2_5_vl": "05493ab2db5ead5e",
    "qwen3_vl": "50e26c79177fd910",
    "gemma3": "b616b5a7dbccc177",
    "llava_next": "40b890cc04e93f20",
    "llava_onevision": "1171cb49221ecb5f",
}
BENCH_CONFIGS = {
    "llava-1.5-7b": "ea30d5d82af1e2ba",
    "qwen2.5-vl-7b": "17a54781066a3556",
    "gemma-3-4b": "ace11009f2c2dde6",
    "llava-next-7b": "4030e344ea326d50",
    "llava-onevision-7b": "571be7a736d747b0",
}
FIXTURE_CONFIGS = {
    "llava": "1a865d85d6b9e74c",
    "qwen2_5_vl": "6879822c637c5956",
    "gemma3": "81dccf6457cbd6e2",
}  # the default spec's


def test_tiny_configs_are_unchanged(family):
    assert _digest(tiny.tiny_model(family).config) == TINY_CONFIGS[family]


@pytest.mark.parametrize("arch", list(BENCH_CONFIGS))
def test_bench_configs_are_unchanged(arch):
    assert _digest(bench.ARCHS[arch]()) == BENCH_CONFIGS[arch]  # never built here: 4-7 B parameters


@pytest.mark.parametrize("name", fixtures.FAMILIES)
def test_fixture_configs_are_unchanged(name):
    model, _ = fixtures.build(name)
    assert _digest(model.config) == FIXTURE_CONFIGS[name]
