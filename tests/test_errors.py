"""Bad input is rejected with an error naming the problem."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

import vlmzip
from vlmzip.eval import fixtures
from vlmzip.eval.tiny import random_inputs, tiny_model


def test_model_without_adapter():
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    with pytest.raises(ValueError, match="no adapter for model_type 'llama'.*Supported model types: .*llava"):
        vlmzip.compress(model, "none")


def test_unknown_method_and_parameter_through_compress():
    model = tiny_model("llava")
    with pytest.raises(ValueError, match="unknown method 'fastvv'"):
        vlmzip.compress(model, "fastvv:keep=0.5")
    with pytest.raises(ValueError, match="unknown parameter 'ratio'"):
        vlmzip.compress(model, "fastv:ratio=0.5")
    with pytest.raises(ValueError, match="keep=1.5 is out of range"):
        vlmzip.compress(model, "knorm:keep=1.5")


def test_a_method_reading_vision_attention_needs_an_attention_layer_before_the_features():
    # the SMALL LLaVA fixture reads layer -2 of a 1-layer tower: the patch embeddings, before any attention
    model, _ = fixtures.build("llava", spec=fixtures.SMALL)
    with pytest.raises(ValueError, match="vtc-cls: .* before its vision tower's first attention layer .* fastv"):
        vlmzip.compress(model, "vtc-cls:keep=0.25")
    assert vlmzip.policy_of(model) is None


def test_rejected_policy_keeps_the_previous_one():
    model = tiny_model("llava")
    vlmzip.compress(model, "knorm:keep=0.5")
    with pytest.raises(ValueError, match="beyond the language model's depth"):
        vlmzip.compress(model, "fastv:layer=9")
    assert str(vlmzip.policy_of(model)) == "knorm:keep=0.5"


def test_stats_before_compress_or_run():
    model = tiny_model("llava")
    with pytest.raises(ValueError, match="not compressed"):
        vlmzip.stats(model)
    vlmzip.compress(model, "none")
    with pytest.raises(ValueError, match="has not run yet"):
        vlmzip.stats(model)


def test_inputs_embeds_without_ids_for_a_visual_method():
    model = tiny_model("llava")
    inputs = random_inputs(model, [1])
    vlmzip.compress(model, "fastv:layer=1,keep=0.5")
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="pass input_ids, not inputs_embeds"):
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


def test_unsupported_backend():
    model = tiny_model("llava")
    model.config.get_text_config()._attn_implementation_internal = "flex_attention"
    with pytest.raises(ValueError, match="attention backend 'flex_attention' is not supported"):
        vlmzip.compress(model, "none")
