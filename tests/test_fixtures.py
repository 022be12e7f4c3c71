"""Fixture builders and training (``vlmzip.eval.fixtures``): tokenizer coverage, processor/config agreement,
save/load round trip, and a CPU overfit / resume check on the SMALL spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmzip.eval import fixtures, synthetic

FIXTURE_FAMILIES = fixtures.FAMILIES  # not named ``family``: conftest parametrises that name over tiny.FAMILIES


@pytest.fixture(scope="module", params=FIXTURE_FAMILIES)
def built(request):
    model, processor = fixtures.build(request.param)
    return request.param, model, processor


def _image_inputs(processor, n: int = 2, seed: int = 0, mc: bool = True):
    batch = synthetic.image_batch(n, seed, synthetic.IMAGE_CURRICULUM[-1], split="validation")
    texts = [fixtures.chat_prompt(processor, synthetic.mc_prompt(q) if mc else q.text) for q in batch.questions]
    return fixtures.encode(processor, texts, batch.images)


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
    for level in synthetic.VIDEO_CURRICULUM:
        for _ in range(40):
            _, qs = synthetic.sample_video_item(rng, level, None, 3)
            texts += [t for q in qs for t in (synthetic.mc_prompt(q, "video"), q.answer_word)]
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
    inputs = _image_inputs(processor)
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
    fixtures.save(model, processor, tmp_path)
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
    inputs = _image_inputs(loaded_processor, mc=False)
    assert torch.equal(inputs["input_ids"], _image_inputs(processor, mc=False)["input_ids"])
    out = loaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_overfits_fixed_batch(fixture_family):
    torch.manual_seed(0)
    model, processor = fixtures.build(fixture_family, spec=fixtures.SMALL)
    batch = synthetic.image_batch(4, 0, synthetic.IMAGE_CURRICULUM[1], size=fixtures.SMALL.image_size)
    prompts = [synthetic.mc_prompt(q) for q in batch.questions[:2]] + [q.text for q in batch.questions[2:]]
    answers = [q.answer for q in batch.questions[:2]] + [q.answer_word for q in batch.questions[2:]]
    inputs = fixtures.training_inputs(processor, prompts, answers, "image", images=batch.images)
    supervised = (inputs["labels"] != -100).sum(1)
    assert (supervised >= 2).all() and (supervised <= 4).all()  # answer (1-2 words) + EOS only
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_resume(tmp_path):
    options = {"spec": fixtures.SMALL, "eval_size": 4, "log_every": 1, "warmup": 1, "checkpoint_every": 2}
    fixtures.train("qwen2_5_vl", 2, 2, 1e-3, "cpu", tmp_path, eval_every=2, **options)
    fixtures.train("qwen2_5_vl", 4, 2, 1e-3, "cpu", tmp_path, resume=True, eval_every=2, **options)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert {r["kind"] for r in records if "loss" in r} == {"image", "video"}
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(0 <= r["letter"] <= 1 for r in evals)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    model, _ = fixtures.load(tmp_path / "model")
    assert model.config.model_type == "qwen2_5_vl"


def test_cli_train(tmp_path):
    args = ["train", "--family", "llava", "--steps", "1", "--batch-size", "2", "--out", str(tmp_path), "--small"]
    assert fixtures.main([*args, "--device", "cpu", "--eval-every", "0"]) == 0
    assert (tmp_path / "model" / "model.safetensors").exists()
