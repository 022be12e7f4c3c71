"""The fixtures' builders (``vlmzip.eval.fixtures``): tokenizer coverage, processor/config agreement, processor
inputs of images and videos, and the save/load round trip. Their trainer is tested in ``test_training.py``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FIXTURE_FAMILIES, image_inputs

import vlmzip
from vlmzip.eval import fixtures, processing, synthetic


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_prompts_have_no_unknown_token(fixture_family):
    tok = fixtures.build_tokenizer(fixture_family)
    vocab = tok.get_vocab()
    rng = np.random.default_rng(0)
    texts = []
    for level in synthetic.IMAGE_CURRICULUM:
        for _ in range(150):
            _, q = synthetic.sample_image_item(rng, level, None)
            texts += [synthetic.mc_prompt(q, "image"), q.text, q.answer_word, q.answer]
            texts.append(synthetic.mc_prompt(synthetic.option_lookup(q), "image"))
    for level in synthetic.VIDEO_CURRICULUM:
        for _ in range(40):
            _, qs = synthetic.sample_video_item(rng, level, None, 3)
            texts += [t for q in qs for t in (synthetic.mc_prompt(q, "video"), q.answer_word)]
            texts += [synthetic.mc_prompt(synthetic.option_lookup(q), "video") for q in qs]
    unknown = {t for text in texts for t in tok.tokenize(text) if t not in vocab or t == tok.unk_token}
    assert not unknown
    assert tok.decode(tok("the red circle moved left")["input_ids"]) == "the red circle moved left"


def test_special_ids_agree(built):
    fam, model, processor = built
    tok, config = processor.tokenizer, model.config
    assert config.image_token_id == tok.convert_tokens_to_ids(tok.image_token)
    assert config.get_text_config().eos_token_id == tok.eos_token_id
    assert config.get_text_config().pad_token_id == tok.pad_token_id
    assert len(tok) <= config.get_text_config().vocab_size
    if fam == "qwen2_5_vl":
        assert config.video_token_id == tok.convert_tokens_to_ids(tok.video_token)
        assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    if fam == "gemma3":
        assert config.boi_token_id == tok.convert_tokens_to_ids(tok.boi_token)
        assert config.eoi_token_id == tok.convert_tokens_to_ids(tok.eoi_token)


def test_visual_token_counts_and_size(built):
    fam, model, processor = built
    inputs = image_inputs(processor)
    expected = fixtures.visual_tokens(fam, fixtures.SPECS[fam])
    assert ((inputs["input_ids"] == model.config.image_token_id).sum(1) == expected).all()
    assert 2_000_000 < fixtures.param_count(model) < 3_500_000
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape


def test_qwen_video_tokens():
    model, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    batch = synthetic.video_batch(2, 0, synthetic.VIDEO_CURRICULUM[0], size=fixtures.SMALL.image_size)
    texts = [fixtures.chat_prompt(processor, synthetic.mc_prompt(qs[0], "video"), "video") for qs in batch.questions]
    inputs = fixtures.encode(processor, texts, videos=batch.videos)
    counts = (inputs["input_ids"] == model.config.video_token_id).sum(1).tolist()
    assert counts == [fixtures.visual_tokens("qwen2_5_vl", fixtures.SMALL, len(v)) for v in batch.videos]
    grid = inputs["video_grid_thw"]
    assert inputs["pixel_values_videos"].shape == (int(grid.prod(1).sum()), 3 * 2 * 4 * 4)
    with torch.no_grad():
        assert model(**inputs).logits.isfinite().all()


def test_save_load_round_trip(built, tmp_path):
    fam, model, processor = built
    fixtures.save(model, processor, tmp_path, fixtures.SPECS[fam])
    assert fixtures.saved_spec(tmp_path) == fixtures.SPECS[fam]
    size = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert size < 6.5e6
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == {"llava": "LlavaProcessor", "gemma3": "Gemma3Processor"}.get(
        fam, "Qwen2_5_VLProcessor"
    )
    loaded, loaded_processor = fixtures.load(tmp_path)
    assert type(loaded) is type(model)
    reference = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, reference[name]), name
    inputs = image_inputs(loaded_processor, mc=False)
    assert torch.equal(inputs["input_ids"], image_inputs(processor, mc=False)["input_ids"])
    out = loaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_rope_theta_sets_qwens_mrope_frequencies():
    spec = fixtures.spec_with("qwen2_5_vl", fixtures.SMALL, ["rope_theta=100"])
    model, _ = fixtures.build("qwen2_5_vl", spec=spec)
    assert model.config.text_config.rope_parameters["rope_theta"] == 100.0
    d = spec.head_dim
    expected = 100.0 ** -(torch.arange(0, d, 2, dtype=torch.float32) / d)
    torch.testing.assert_close(model.model.language_model.rotary_emb.inv_freq, expected)


def test_qwen_windows_are_whole_merged_tokens_of_a_fixed_size():
    with pytest.raises(ValueError, match="vision_window=12 must be a multiple of patch_size x merge \\(8\\)"):
        fixtures.build("qwen2_5_vl", spec=replace(fixtures.SMALL, vision_window=12))
    fixtures.build("llava", spec=replace(fixtures.SMALL, patch_size=8, vision_window=12))  # LLaVA has no windows
    spec = fixtures.spec_with("qwen2_5_vl", fixtures.SMALL, ["image_size=64"])
    model, _ = fixtures.build("qwen2_5_vl", spec=spec)
    assert model.config.vision_config.window_size == fixtures.SMALL.vision_window == 16  # more windows, not larger


def test_compress_runs_on_llava_with_gemma3s_decoder():
    spec = fixtures.spec_with("llava", fixtures.SMALL, ["decoder=gemma3_text"])
    model, processor = fixtures.build("llava", spec=spec)
    inputs = image_inputs(processor)  # a batch of 2, 64 visual tokens each
    untouched = model.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    for policy, stage in (("random:keep=0.25", "vision"), ("fastv:layer=1,keep=0.25", "prefill")):
        vlmzip.compress(model, policy)
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert vlmzip.stats(model).visual_tokens_kept[stage] == [16, 16], policy
    vlmzip.compress(model, "fastv:layer=1,keep=1.0")
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), untouched)
    vlmzip.restore(model)


def test_qwen_patches_of_equal_length_clips_are_made_together():
    _, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    gen = torch.Generator().manual_seed(0)
    side = fixtures.SMALL.image_size
    clips = [torch.randint(0, 256, (n, 3, side, side), generator=gen, dtype=torch.uint8) for n in (3, 8, 3, 1, 8)]
    rows, grids = processing.qwen_patches(processor, clips)
    one_by_one = [processing.qwen_patches(processor, [clip]) for clip in clips]
    torch.testing.assert_close(rows, torch.cat([r for r, _ in one_by_one]), rtol=0, atol=0)
    assert grids.tolist() == [g.tolist()[0] for _, g in one_by_one]
    assert grids.tolist() == [[2, 8, 8], [4, 8, 8], [2, 8, 8], [1, 8, 8], [4, 8, 8]]
