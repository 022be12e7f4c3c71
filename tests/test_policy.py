"""Policy strings, method parameters and the method registry."""

from __future__ import annotations

import pytest

import vlmzip
from vlmzip import Policy, PolicyError
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.methods.fastv import FastV
from vlmzip.methods.knorm import Knorm
from vlmzip.methods.vtc_cls import VtcCls
from vlmzip.policy import PRESETS


def test_round_trip_all_stages():
    policy = Policy.parse("vtc-cls:keep=64+fastv:layer=2,keep=0.5+knorm:keep=0.25")
    assert policy == Policy(VtcCls(keep=64), FastV(layer=2, keep=0.5), Knorm(keep=0.25))
    assert str(policy) == "vtc-cls:keep=64,layers=8+fastv:layer=2,keep=0.5+knorm:keep=0.25"
    assert Policy.parse(str(policy)) == policy


def test_none_and_defaults():
    assert Policy.parse("none") == Policy()
    assert str(Policy()) == "none"
    assert Policy.parse("fastv") == Policy(prefill=FastV())
    assert FastV() == FastV(layer=2, keep=0.5)  # FastV's published defaults


@pytest.mark.parametrize(("text", "keep"), [("1.0", 1.0), ("1", 1), ("0.25", 0.25), ("64", 64), ("1e-1", 0.1)])
def test_keep_is_fraction_with_a_point_and_count_without(text, keep):
    parsed = Policy.parse(f"knorm:keep={text}").decode.keep
    assert parsed == keep and type(parsed) is type(keep)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vtc-clss:keep=64", "unknown method 'vtc-clss'. Did you mean 'vtc-cls'?"),
        ("fastv:depth=2", "fastv: unknown parameter 'depth'"),
        ("fastv:keep=0", "keep=0 must keep at least one token"),
        ("fastv:keep=0.0", "keep=0.0 is out of range"),
        ("fastv:keep=1.5", "keep=1.5 is out of range"),
        ("fastv:keep=-3", "keep=-3 must keep at least one token"),
        ("fastv:layer=0", "layer=0 must be >= 1"),
        ("fastv:layer=two", "layer='two' is not a valid int"),
        ("fastv:layer", "expected param=value"),
        ("fastv:keep=0.5,keep=0.2", "given twice"),
        ("fastv+fastv", "two prefill-stage methods"),
        ("", "must be non-empty"),
        ("random:seed=1.5", "seed='1.5' is not a valid int"),
    ],
)
def test_bad_policies_name_the_problem(text, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Policy.parse(text)


def test_policy_errors_are_value_errors():
    with pytest.raises(ValueError):
        Policy.parse("nope")


def test_python_api_validates_too():
    with pytest.raises(PolicyError, match="keep=1.5 is out of range"):
        FastV(keep=1.5)
    with pytest.raises(PolicyError, match="must be a prefill-stage method"):
        Policy(prefill=Knorm())


def test_methods_lists_every_method_with_stage_and_parameters():
    listed = {info.name: info for info in vlmzip.methods() if info.builtin}
    assert {"random", "uniform", "vtc-cls", "fastv", "knorm"} <= set(listed)
    assert listed["fastv"].stage == "prefill" and listed["fastv"].params == {"layer": 2, "keep": 0.5}
    assert listed["vtc-cls"].stage == "vision" and "layers" in listed["vtc-cls"].params
    assert listed["knorm"].stage == "decode"
    assert all(info.paper and info.title for info in listed.values())


def test_a_preset_is_the_paper_at_every_stage_and_the_bare_name_in_a_chain_is_one_method():
    preset = vlmzip.Policy.parse("mustdrop")
    assert [m.name for m in preset.methods()] == ["mustdrop-vision", "mustdrop", "mustdrop-decode"]
    assert preset == vlmzip.Policy.parse(PRESETS["mustdrop"])
    assert [m.name for m in vlmzip.Policy.parse("vtc-cls:keep=64+mustdrop").methods()] == ["vtc-cls", "mustdrop"]
    assert [m.name for m in vlmzip.Policy.parse("mustdrop:keep=0.5").methods()] == ["mustdrop"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_generate_on_a_tiny_model(name):
    model = tiny_model("qwen2_5_vl")
    inputs = random_inputs(model, [1, 1], seed=0)
    vlmzip.compress(model, name)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    stats = vlmzip.stats(model)
    vlmzip.restore(model)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert set(stats.visual_tokens_kept) == {"mustdrop": {"vision", "prefill"}, "zipvl": {"prefill"}}[name]
    assert stats.kv_bytes > 0
