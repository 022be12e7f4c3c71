"""The fixtures' trainer (``training/``, not installed): fast training inputs against the processors, the CPU
overfit / resume / stop checks on the SMALL spec, growing and narrowing a continued fixture, the command line,
and that the installed package holds no training loop."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE_FAMILIES, image_inputs

from training import data, grow, loop
from training.inputs import QwenIndex, training_inputs
from vlmzip.eval import fixtures, synthetic


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_overfits_fixed_batch(fixture_family):
    torch.manual_seed(0)
    model, processor = fixtures.build(fixture_family, spec=fixtures.SMALL)
    batch = synthetic.image_batch(4, 0, synthetic.IMAGE_CURRICULUM[1], size=fixtures.SMALL.image_size)
    prompts = [synthetic.mc_prompt(q) for q in batch.questions[:2]] + [q.text for q in batch.questions[2:]]
    answers = [q.answer for q in batch.questions[:2]] + [q.answer_word for q in batch.questions[2:]]
    inputs = training_inputs(processor, prompts, answers, "image", images=batch.images)
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
    loop.train("qwen2_5_vl", 2, 2, 1e-3, "cpu", tmp_path, eval_every=2, **options)
    loop.train("qwen2_5_vl", 4, 2, 1e-3, "cpu", tmp_path, resume=True, eval_every=2, **options)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert {r["kind"] for r in records if "loss" in r} == {"image", "video"}
    evals = [r for r in records if "eval" in r]
    assert [(r["step"], r["eval"]) for r in evals] == [(s, m) for s in (2, 4) for m in ("image", "video")]
    assert all(0 <= r["letter"] <= 1 for r in evals)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    model, _ = fixtures.load(tmp_path / "model")
    assert model.config.model_type == "qwen2_5_vl"
    loop.train("qwen2_5_vl", 1, 2, 1e-3, "cpu", tmp_path, eval_every=0, **options)  # a new run, same place
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]


def test_stop_at_keeps_the_schedule_and_resumes_to_the_same_model(tmp_path):
    # A round stopped by --max-minutes ends wherever time ran out; --stop-at ends it at that step on any machine.
    options = {"spec": fixtures.SMALL, "eval_every": 0, "log_every": 1, "warmup": 0}  # step 2's lr tells 4 steps from 2
    straight = loop.train("llava", 4, 2, 1e-3, "cpu", tmp_path / "straight", **options)
    loop.train("llava", 4, 2, 1e-3, "cpu", tmp_path / "stopped", stop_at=2, **options)
    logs = {
        d: [json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        for d in ("straight", "stopped")
    }
    assert logs["stopped"][-1] == {"step": 2, "stopped": "stop_at=2 reached"}
    assert [r["lr"] for r in logs["stopped"][:2]] == [r["lr"] for r in logs["straight"][:2]]  # the 4-step schedule
    with pytest.raises(ValueError, match="stop_at=2: the checkpoint in .* is at step 2 already; resume with a later"):
        loop.train("llava", 4, 2, 1e-3, "cpu", tmp_path / "stopped", resume=True, stop_at=2, **options)
    resumed = loop.train("llava", 4, 2, 1e-3, "cpu", tmp_path / "stopped", resume=True, **options)
    for (name, want), got in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_vision_tower_has_its_own_learning_rate(fixture_family):
    model, _ = fixtures.build(fixture_family, spec=fixtures.SMALL)
    cfg = data.TrainConfig(fixture_family, 10, lr=1e-3, vision_lr=4e-3)
    vision, rest = loop._param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    assert vision["scale"] == pytest.approx(4.0) and rest["scale"] == 1.0
    assert len(vision["params"]) + len(rest["params"]) == len(names)
    assert all(".visual." in names[id(p)] or ".vision_tower." in names[id(p)] for p in vision["params"])
    assert not any(".visual." in names[id(p)] or ".vision_tower." in names[id(p)] for p in rest["params"])
    default = loop._param_groups(model, data.TrainConfig(fixture_family, 10, lr=1e-3))
    assert [g["scale"] for g in default] == [1.0, 1.0]


def test_train_skips_a_non_finite_gradient(tmp_path, monkeypatch):
    loss = loop._loss

    def nan_loss(*args):
        value, exact = loss(*args)
        return value * float("nan"), exact

    monkeypatch.setattr(loop, "_loss", nan_loss)
    torch.manual_seed(0)
    model = loop.train("gemma3", 2, 2, 1e-3, "cpu", tmp_path, spec=fixtures.SMALL, eval_every=0, warmup=1)
    untrained, _ = fixtures.build("gemma3", spec=fixtures.SMALL)
    for name, weight in untrained.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped" in r] == [1, 2]


def test_cli_train(tmp_path, capsys):
    args = ["train", "--family", "llava", "--steps", "1", "--batch-size", "2", "--small", "--device", "cpu"]
    args += ["--eval-every", "0"]
    assert loop.main([*args, "--out", str(tmp_path / "g"), "--spec", "decoder=gemma3_text"]) == 0
    assert fixtures.load(tmp_path / "g" / "model")[0].config.text_config.model_type == "gemma3_text"
    assert loop.main([*args, "--out", str(tmp_path / "a"), "--spec", "vision_layers=2", "feature_layer=-1"]) == 0
    model, _ = fixtures.load(tmp_path / "a" / "model")
    assert model.config.vision_config.num_hidden_layers == 2 and model.config.vision_feature_layer == -1
    assert json.loads((tmp_path / "a" / "config.json").read_text())["spec"]["feature_layer"] == -1
    assert fixtures.saved_spec(tmp_path / "a" / "model") == fixtures.spec_with(
        "llava", fixtures.SMALL, ["vision_layers=2", "feature_layer=-1"]
    )
    # Continuing it keeps its spec (sizes and feature layer) unless --spec changes a field that keeps the sizes.
    init = ["--init", str(tmp_path / "a" / "model")]
    common = [a for a in args if a != "--small"]
    assert loop.main([*common, "--out", str(tmp_path / "b"), *init]) == 0
    model, _ = fixtures.load(tmp_path / "b" / "model")
    assert model.config.vision_config.num_hidden_layers == 2 and model.config.vision_feature_layer == -1
    assert loop.main([*common, "--out", str(tmp_path / "b"), *init, "--spec", "feature_layer=-3"]) == 0
    model, _ = fixtures.load(tmp_path / "b" / "model")
    assert model.config.vision_feature_layer == -3
    with pytest.raises(SystemExit):
        loop.main([*common, "--out", str(tmp_path / "c"), *init, "--spec", "vision_hidden=64"])
    grow_only = "cannot continue with vision_hidden 32 -> 64: .* grow \\(vision_layers, text_layers\\)"
    assert re.search(grow_only, capsys.readouterr().err)
    with pytest.raises(ValueError, match=grow_only):  # train() checks too
        spec = replace(fixtures.saved_spec(init[1]), vision_hidden=64)
        loop.train("llava", 1, out_dir=tmp_path / "d", spec=spec, init=init[1])
    assert loop.main([*common, "--out", str(tmp_path / "c"), *init, "--spec", "vision_layers=3"]) == 0
    assert fixtures.saved_spec(tmp_path / "c" / "model").vision_layers == 3
    with pytest.raises(SystemExit):
        loop.main([*args, "--out", str(tmp_path / "c"), *init])
    assert "--small and --init" in capsys.readouterr().err
    (tmp_path / "a" / "model" / fixtures.SPEC_FILE).unlink()
    with pytest.raises(SystemExit):
        loop.main([*common, "--out", str(tmp_path / "c"), *init])
    assert "fixture_spec.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_deepen_keeps_what_the_fixture_computes(fixture_family):
    small, _ = fixtures.build(fixture_family, seed=0, spec=fixtures.SMALL)
    spec = replace(fixtures.SMALL, vision_layers=3, text_layers=3)
    grow.check_growth(fixture_family, fixtures.SMALL, spec)
    deeper, processor = fixtures.build(fixture_family, seed=1, spec=spec)
    deeper.load_state_dict(grow.deepen(small.state_dict(), deeper))
    assert fixtures.param_count(deeper) > fixtures.param_count(small)
    batch = synthetic.image_batch(3, 0, synthetic.IMAGE_CURRICULUM[-1], size=spec.image_size, split="validation")
    texts = [fixtures.chat_prompt(processor, synthetic.mc_prompt(q)) for q in batch.questions]
    inputs = fixtures.encode(processor, texts, batch.images)
    with torch.no_grad():
        assert torch.equal(small.eval()(**inputs).logits, deeper.eval()(**inputs).logits)
    # The new layers are the identity through their zeroed writers only: the rest of them can learn.
    new_layer = {k: v for k, v in deeper.state_dict().items() if re.search(r"\.(layers|blocks)\.1\.", k)}
    assert any(v.abs().sum() > 0 for k, v in new_layer.items() if "proj" in k or "fc1" in k)


@pytest.mark.parametrize("fixture_family", FIXTURE_FAMILIES)
def test_narrow_keeps_the_neurons_that_carry_the_most(fixture_family):
    """Neurons whose down_proj column is zero carry nothing: narrowing drops exactly those, and the narrower
    model computes what the fixture did (up to the order of a sum)."""
    model, processor = fixtures.build(fixture_family, seed=0, spec=fixtures.SMALL)
    width = fixtures.SMALL.text_intermediate
    dead = torch.randperm(width, generator=torch.Generator().manual_seed(0))[: width // 2]
    state = model.state_dict()
    for key in state:
        if re.search(r"language_model\.layers\.\d+\.mlp\.down_proj\.weight$", key):
            state[key][:, dead] = 0
    batch = synthetic.image_batch(3, 0, synthetic.IMAGE_CURRICULUM[-1], size=32, split="validation")
    texts = [fixtures.chat_prompt(processor, synthetic.mc_prompt(q)) for q in batch.questions]
    inputs = fixtures.encode(processor, texts, batch.images)
    scores = grow.mlp_neuron_scores(model, inputs)
    assert len(scores) == fixtures.SMALL.text_layers
    assert all(bool((score[dead] == 0).all()) and bool(score.sum() > 0) for score in scores.values())
    narrower, _ = fixtures.build(fixture_family, seed=1, spec=replace(fixtures.SMALL, text_intermediate=width // 2))
    narrower.load_state_dict(grow.deepen(grow.narrow(state, scores, width // 2), narrower))
    alive = torch.tensor([i for i in range(width) if i not in set(dead.tolist())])
    name = next(iter(scores))
    assert torch.equal(narrower.state_dict()[f"{name}.up_proj.weight"], state[f"{name}.up_proj.weight"][alive])
    with torch.no_grad():
        torch.testing.assert_close(narrower.eval()(**inputs).logits, model.eval()(**inputs).logits)
    with pytest.raises(ValueError, match="has 128 neurons: it cannot narrow to 129"):
        grow.narrow(state, scores, width + 1)


def test_cli_train_narrows_a_continued_fixture(tmp_path, capsys):
    args = ["train", "--family", "qwen2_5_vl", "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    args += ["--eval-every", "0"]
    assert loop.main([*args, "--small", "--out", str(tmp_path / "a")]) == 0
    init = ["--init", str(tmp_path / "a" / "model")]
    assert loop.main([*args, *init, "--out", str(tmp_path / "b"), "--spec", "text_intermediate=96"]) == 0
    model, _ = fixtures.load(tmp_path / "b" / "model")
    assert model.config.text_config.intermediate_size == 96
    assert fixtures.saved_spec(tmp_path / "b" / "model").text_intermediate == 96
    with pytest.raises(SystemExit):
        loop.main([*args, *init, "--out", str(tmp_path / "c"), "--spec", "text_intermediate=256"])
    assert "text_intermediate=256 is more than the fixture's 128: its MLPs can narrow" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fixture_family", "changes", "message"),
    [
        ("llava", {"text_layers": 1}, "text_layers=1 is fewer than the fixture's 2: a fixture can grow, not shrink"),
        ("gemma3", {"vision_layers": 3, "text_layers": 1}, "text_layers=1 is fewer"),
        ("qwen2_5_vl", {"vision_layers": 2}, "grows by an even number of layers \\(3, 5, ...\\)"),
    ],
)
def test_check_growth_refuses_what_would_change_the_fixture(fixture_family, changes, message):
    with pytest.raises(ValueError, match=message):
        grow.check_growth(fixture_family, fixtures.SMALL, replace(fixtures.SMALL, **changes))


def test_check_growth_refuses_a_feature_layer_that_would_move():
    old = replace(fixtures.SMALL, vision_layers=4, feature_layer=-3)
    with pytest.raises(ValueError, match="feature_layer=-3 would read another layer.*-1, -2 or 1..3"):
        grow.check_growth("llava", old, replace(old, vision_layers=6))
    grow.check_growth("llava", old, replace(old, vision_layers=6, feature_layer=-5))  # named: the user's call
    grow.check_growth("llava", replace(old, feature_layer=3), replace(old, vision_layers=6, feature_layer=3))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("layers=6", "FIELD one of .*vision_layers"),
        ("vision_layers", "expected FIELD=N"),
        ("vision_layers=six", "integer"),
        ("vision_layers=0", "vision_layers=0 must be >= 1"),
        ("feature_layer=5", "names no output of 4 vision layers"),
        ("feature_layer=0", "cannot read layer 0; name the embeddings -5"),
        ("pooled_side=16", "only gemma3 models read pooled_side, not llava"),
        ("rope_theta=100", "only qwen2_5_vl models read rope_theta, not llava"),
        ("vision_window=16", "only qwen2_5_vl models read vision_window, not llava"),
        ("decoder=mistral", "decoder='mistral': choose one of llama, gemma3_text"),
    ],
)
def test_cli_rejects_a_bad_spec_change(tmp_path, capsys, change, message):
    with pytest.raises(SystemExit):
        loop.main(["train", "--family", "llava", "--steps", "1", "--out", str(tmp_path), "--spec", change])
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--stop-at", "5"], "stop_at must be between 1 and steps \\(1\\)"),
        (["--caption-fraction", "0.9", "--word-fraction", "0.5"], "sum to at most 1"),
        (["--image-levels", "0", "9"], "image_levels must be 0 <= lo <= hi < 5"),
        (["--workers", "-1"], "workers must be >= 0"),
        (["--scene-size", "-1"], "scene_size must be >= 0"),
        (["--focus-fraction", "0.5"], "focus_fraction=0.5 with focus_families=\\(\\): give both"),
        (["--focus-families", "relation"], "focus_fraction=0.0 with focus_families=\\('relation',\\): give both"),
        (["--focus-families", "colour", "--focus-fraction", "0.5"], "focus_families \\['colour'\\]: choose from"),
        (["--focus-families", "recolour", "--focus-fraction", "0.5"], "video_every=2 trains on no videos"),
        (
            ["--focus-families", "relation", "--focus-fraction", "0.5", "--image-levels", "0", "0"],
            "family 'relation' needs max_objects >= 2",
        ),
    ],
)
def test_cli_rejects_a_bad_run_as_a_usage_error(tmp_path, capsys, options, message):
    """TrainConfig's checks reach the command line as usage errors (exit 2), before anything is built or written."""
    with pytest.raises(SystemExit) as exit_:
        loop.main(["train", "--family", "llava", "--steps", "1", "--out", str(tmp_path / "run"), *options])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_cli_passes_every_training_flag_to_the_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(loop, "_fit", lambda cfg, spec, *rest: ran.append(cfg))
    flags = (
        "--batch-size 4 --lr 2e-3 --vision-lr 3e-3 --eval-every 5 --eval-size 8 --video-batch-size 2 --video-every 3"
    )
    flags += " --workers 1 --max-minutes 1.5 --stop-at 7 --seed 3 --image-levels 1 2 --video-levels 0 1 --warmup 4"
    flags += " --curriculum-fraction 0.2 --caption-fraction 0.1 --word-fraction 0.3 --lookup-fraction 0.1 --small"
    flags += " --scene-size 24 --focus-families relation position_of --focus-fraction 0.25"
    loop.main(["train", "--family", "qwen2_5_vl", "--steps", "10", *flags.split(), "--out", str(tmp_path)])
    assert ran == [
        data.TrainConfig(
            "qwen2_5_vl",
            10,
            4,
            2e-3,
            vision_lr=3e-3,
            eval_every=5,
            eval_size=8,
            video_batch_size=2,
            video_every=3,
            workers=1,
            max_minutes=1.5,
            stop_at=7,
            seed=3,
            image_levels=(1, 2),
            video_levels=(0, 1),
            warmup=4,
            curriculum_fraction=0.2,
            caption_fraction=0.1,
            word_fraction=0.3,
            lookup_fraction=0.1,
            focus_families=("relation", "position_of"),
            focus_fraction=0.25,
            scene_size=24,
        )
    ]


def test_a_continued_gemma3_can_read_more_visual_tokens(tmp_path):
    """pooled_side and sliding_window keep the weights' shapes, so a continued Gemma-3 fixture may read its image
    unpooled (4x the visual tokens) with a window that covers them."""
    model, processor = fixtures.build("gemma3", spec=fixtures.SMALL)
    fixtures.save(model, processor, tmp_path / "a", fixtures.SMALL)
    spec = fixtures.spec_with("gemma3", fixtures.SMALL, ["pooled_side=8", "sliding_window=128"])
    init = str(tmp_path / "a")
    more = loop.train("gemma3", 1, 2, out_dir=tmp_path / "b", spec=spec, init=init, eval_every=0, warmup=1)
    assert more.config.mm_tokens_per_image == 64 == 4 * fixtures.visual_tokens("gemma3", fixtures.SMALL)
    assert more.config.text_config.sliding_window == 128
    assert fixtures.saved_spec(tmp_path / "b" / "model") == spec
    with pytest.raises(ValueError, match="it can change feature_layer, rope_theta, pooled_side, sliding_window"):
        loop.train("gemma3", 1, 2, out_dir=tmp_path / "c", spec=replace(spec, text_hidden=128), init=init)


def test_a_continued_qwen_can_read_larger_images(tmp_path):
    """Qwen2.5-VL's tower has no position table sized by the image, so a continued Qwen2.5-VL fixture may read
    larger images (more visual tokens) from the same weights, trained on scenes of the data's size resized as its
    processor resizes them; LLaVA's CLIP positions fix its size."""
    model, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    fixtures.save(model, processor, tmp_path / "a", fixtures.SMALL)
    spec = fixtures.spec_with("qwen2_5_vl", fixtures.SMALL, ["image_size=48"])
    init, options = str(tmp_path / "a"), {"eval_every": 1, "eval_size": 2, "warmup": 1, "scene_size": 32}
    larger = loop.train("qwen2_5_vl", 2, 2, out_dir=tmp_path / "b", spec=spec, init=init, **options)
    grown = {k: v.shape for k, v in larger.state_dict().items()}
    assert grown == {k: v.shape for k, v in model.state_dict().items()}  # the same weights, read at 48 x 48
    served, processor = fixtures.load(tmp_path / "b" / "model")
    inputs = image_inputs(processor)  # 64 x 64 validation scenes, which its processor resizes to 48 x 48
    assert (inputs["input_ids"] == served.config.image_token_id).sum(1).tolist() == [36, 36]  # 16 at 32 x 32
    with torch.no_grad():
        assert served(**inputs).logits.isfinite().all()
    assert fixtures.saved_spec(tmp_path / "b" / "model") == spec
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert {r["eval"] for r in log if "eval" in r} == {"image", "video"}
    assert not any("error" in r for r in log), log  # its evaluations resize the 32 x 32 scenes too
    model, processor = fixtures.build("llava", spec=fixtures.SMALL)
    fixtures.save(model, processor, tmp_path / "c", fixtures.SMALL)
    llava = fixtures.spec_with("llava", fixtures.SMALL, ["image_size=48"])
    with pytest.raises(
        ValueError,
        match="image_size 32 -> 48: a continued fixture keeps its architecture; it can "
        "change feature_layer, rope_theta, pooled_side, sliding_window, vision_window, grow .* and narrow",
    ):
        loop.train("llava", 1, 2, out_dir=tmp_path / "d", spec=llava, init=str(tmp_path / "c"))


def test_step_examples_render_scenes_at_their_size_and_serve_them_at_the_models():
    _, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    cfg = data.TrainConfig("qwen2_5_vl", steps=2, batch_size=4, video_batch_size=2, scene_size=24)
    images, video = (data.step_examples(processor, cfg, step) for step in (0, 1))
    assert images["images"].shape == (4, 3, 32, 32)
    assert all(clip.shape[-2:] == (32, 32) for clip in video["videos"])
    rendered = data.step_examples(processor, replace(cfg, scene_size=0), 0)  # rendered at the model's 32
    assert torch.equal(images["input_ids"], rendered["input_ids"])
    assert not torch.equal(images["images"], rendered["images"])


def test_llava_on_gemma3s_decoder(tmp_path):
    spec = fixtures.spec_with("llava", fixtures.SMALL, ["decoder=gemma3_text"])
    with pytest.raises(ValueError, match="only llava models read decoder, not gemma3"):
        fixtures.spec_with("gemma3", fixtures.SMALL, ["decoder=gemma3_text"])
    model, processor = fixtures.build("llava", spec=spec)
    assert type(model.model.language_model).__name__ == "Gemma3TextModel"
    inputs = image_inputs(processor)
    # its local layers see the whole prompt (the Gemma-3 fixture's window would hide most of the image)
    assert model.config.text_config.sliding_window >= inputs["input_ids"].shape[1]
    fixtures.save(model, processor, tmp_path, spec)
    assert fixtures.saved_spec(tmp_path) == spec
    with pytest.raises(ValueError, match="cannot continue with decoder gemma3_text -> llama"):
        grow.check_continuation("llava", spec, replace(spec, decoder="llama"), tmp_path)
    loaded, _ = fixtures.load(tmp_path)
    assert type(loaded.model.language_model) is type(model.model.language_model)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name].to(torch.bfloat16)), name
    deeper, _ = fixtures.build("llava", seed=1, spec=replace(spec, text_layers=3))
    deeper.load_state_dict(grow.deepen(model.state_dict(), deeper))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, deeper.eval()(**inputs).logits)


def _reference_inputs(processor, prompts, answers, medium, **visual):
    """``training_inputs`` the slow way: the processor (``encode``) on the full texts, right padded."""
    eos = processor.tokenizer.eos_token
    texts = [fixtures.chat_prompt(processor, p, medium) + a + eos for p, a in zip(prompts, answers)]
    return fixtures.encode(processor, texts, padding_side="right", **visual)


@pytest.mark.parametrize("scene_size", [64, 48])
def test_training_inputs_match_processor(built, scene_size):
    """What training feeds the model is what the processor makes of the same scenes; rendered at another size
    than the model's (as the 64 x 64 test sets are for a fixture continued at 96 x 96), once ``resized_for``."""
    _, _, processor = built
    batch = synthetic.image_batch(3, 1, synthetic.IMAGE_CURRICULUM[-1], size=scene_size)
    prompts = [synthetic.caption(batch.scenes[0])[0], batch.questions[1].text, synthetic.mc_prompt(batch.questions[2])]
    answers = [synthetic.caption(batch.scenes[0])[1], batch.questions[1].answer_word, batch.questions[2].answer]
    served = fixtures.resized_for(processor, batch.images)
    assert served.shape[-2:] == (64, 64) and served.dtype == torch.uint8
    fast = training_inputs(processor, prompts, answers, "image", images=served)
    reference = _reference_inputs(processor, prompts, answers, "image", images=batch.images)
    assert set(fast) == set(reference) | {"labels"}
    for key, value in reference.items():
        assert value.dtype == fast[key].dtype, key
        torch.testing.assert_close(fast[key], value, rtol=0, atol=1e-6, msg=key)
    tok = processor.tokenizer
    for row, labels, answer in zip(fast["input_ids"], fast["labels"], answers):
        supervised = row[labels != -100].tolist()
        assert supervised == tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("scene_size", [fixtures.SMALL.image_size, 24])
def test_training_inputs_match_processor_on_videos(scene_size):
    _, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    batch = synthetic.video_batch(2, 0, synthetic.VIDEO_CURRICULUM[-1], size=scene_size)
    assert len({len(v) for v in batch.videos}) == 2  # different lengths, odd or even
    prompts = [synthetic.video_caption(batch.timelines[0])[0], synthetic.mc_prompt(batch.questions[1][0], "video")]
    answers = [synthetic.video_caption(batch.timelines[0])[1], batch.questions[1][0].answer]
    served = [fixtures.resized_for(processor, clip) for clip in batch.videos]
    fast = training_inputs(processor, prompts, answers, "video", videos=served)
    reference = _reference_inputs(processor, prompts, answers, "video", videos=batch.videos)
    # Without torchvision (here, CI) ``encode`` resizes frames as ``resized_for`` does (PIL); transformers' video
    # processor resizes them with torchvision, whose bicubic is PIL's to one level in a few pixels.
    resized_elsewhere = scene_size != fixtures.SMALL.image_size and processor.video_processor is not None
    level = 1 / 255 / min(processor.image_processor.image_std) if resized_elsewhere else 0.0
    for key, value in reference.items():
        torch.testing.assert_close(fast[key].to(value.dtype), value, rtol=0, atol=level + 1e-6, msg=key)


def test_focus_fraction_asks_only_the_focus_families_in_part_of_the_top_half():
    cfg = data.TrainConfig("llava", steps=10, batch_size=16, image_levels=(0, 3), curriculum_fraction=0.1)
    focused = replace(cfg, focus_families=("relation", "position_of"), focus_fraction=0.5)
    rng = lambda: data._step_rng(cfg, 5)  # noqa: E731
    plain, groups = (data._difficulties(c, "image", 5, 16, rng()) for c in (cfg, focused))
    assert groups[0] == (replace(synthetic.IMAGE_CURRICULUM[3], families=("relation", "position_of")), 4)
    assert sum(k for _, k in groups) == sum(k for _, k in plain) == 16
    top = synthetic.IMAGE_CURRICULUM[3]
    assert dict(groups[1:])[top] == dict(plain)[top] - 4  # taken from the top-level half, the rest as before
    _, processor = fixtures.build("llava", spec=fixtures.SMALL)
    images = data.step_examples(processor, focused, 5)["images"]
    assert images.shape[0] == 16 and not torch.equal(images, data.step_examples(processor, cfg, 5)["images"])


def test_focus_on_video_families_shapes_qwens_video_batches_only():
    cfg = data.TrainConfig(
        "qwen2_5_vl", steps=4, batch_size=16, video_batch_size=8, focus_families=("move_direction",), focus_fraction=1
    )
    video = data._difficulties(cfg, "video", 1, 8, data._step_rng(cfg, 1))
    assert video[0] == (replace(synthetic.VIDEO_CURRICULUM[-1], families=("move_direction",)), 4)
    assert data.TrainConfig("qwen2_5_vl", steps=4, batch_size=16).focus_difficulty("video") is None
    assert data._difficulties(cfg, "image", 0, 16, data._step_rng(cfg, 0)) == data._difficulties(
        replace(cfg, focus_families=(), focus_fraction=0), "image", 0, 16, data._step_rng(cfg, 0)
    )
    _, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    assert len(data.step_examples(processor, replace(cfg, video_batch_size=2), 1)["videos"]) == 2


def test_training_batches_are_still_those_the_shipped_rounds_trained_on():
    """The rounds in training/README.md are reproducible only while a (seed, step) makes the same batch: a change to
    the generator, the tokenizer or the task mix (new options at their defaults included) that alters it fails
    here. Update the digest only for a change meant to alter training data, and say so in training/README.md."""
    _, processor = fixtures.build("llava", spec=fixtures.SMALL)
    cfg = data.TrainConfig("llava", steps=100, batch_size=16, image_levels=(0, 4), curriculum_fraction=0.5)
    digest = hashlib.sha256()
    for step in (0, 37, 99):
        batch = data.step_examples(processor, cfg, step)
        for key in ("input_ids", "labels", "images"):
            digest.update(batch[key].numpy().tobytes())
    assert digest.hexdigest() == "f767ae1dbe8d117fe5cf5c33886d527664c99a7616da4940a8393e4cd8eb00e4"


def test_step_examples_are_a_function_of_seed_and_step():
    _, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    cfg = data.TrainConfig("qwen2_5_vl", steps=4, batch_size=6, video_batch_size=2)
    serial = [(step, data.step_examples(processor, cfg, step)) for step in range(1, 4)]
    loader = torch.utils.data.DataLoader(data.Stream(processor, cfg, 1), batch_size=None, num_workers=2)
    parallel = list(loader)
    assert [s for s, _ in parallel] == [1, 2, 3]
    for (_, a), (_, b) in zip(serial, parallel):
        assert a.keys() == b.keys()
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        pixels = "videos" if "videos" in a else "images"
        assert all(torch.equal(x, y) for x, y in zip(a[pixels], b[pixels]))
    assert "videos" in serial[0][1] and "images" in serial[1][1]  # Qwen: every other step is a video batch
    other = data.step_examples(processor, replace(cfg, seed=1), 1)
    assert not torch.equal(other["input_ids"], serial[0][1]["input_ids"])


def test_lookup_examples_ask_which_option_is_the_answer():
    batch = synthetic.image_batch(16, 0, synthetic.IMAGE_CURRICULUM[-1])
    items = [(("Describe the image.", "-"), q) for q in batch.questions]
    cfg = data.TrainConfig("llava", 1, caption_fraction=0.0, word_fraction=0.5, lookup_fraction=0.5)
    prompts, answers = data._examples(items, "image", np.random.default_rng(0), cfg)
    lookups = {i for i, p in enumerate(prompts) if p != batch.questions[i].text}
    assert 0 < len(lookups) < 16
    for i, q in enumerate(batch.questions):
        if i in lookups:
            assert prompts[i] == synthetic.mc_prompt(synthetic.option_lookup(q)) and answers[i] == q.answer
            assert f"\nWhich option is {q.answer_word}?\n{q.options[0]}\n" in prompts[i]
        else:
            assert answers[i] == q.answer_word
    # Without lookups the same draws make those examples the plain prompt: earlier runs' data is unchanged.
    plain, _ = data._examples(items, "image", np.random.default_rng(0), replace(cfg, lookup_fraction=0.0))
    assert plain == [
        synthetic.mc_prompt(q) if i in lookups else p for i, (p, q) in enumerate(zip(prompts, batch.questions))
    ]


def test_train_config_errors():
    with pytest.raises(ValueError, match="unknown family 'clip'"):
        data.TrainConfig("clip", 1)
    with pytest.raises(ValueError, match="lookup_fraction must be >= 0 and sum to at most 1, got \\(0.7, 0.2, 0.2\\)"):
        data.TrainConfig("llava", 1, caption_fraction=0.7, word_fraction=0.2, lookup_fraction=0.2)
    with pytest.raises(ValueError, match="sum to at most 1"):
        data.TrainConfig("llava", 1, lookup_fraction=-0.1)
    with pytest.raises(ValueError, match="stop_at must be between 1 and steps \\(3\\), or 0 for none; got 4"):
        data.TrainConfig("llava", 3, stop_at=4)
    with pytest.raises(ValueError, match="workers, max_minutes, vision_lr must be >= 0"):
        data.TrainConfig("llava", 1, workers=-1, max_minutes=-2, vision_lr=-1)
    with pytest.raises(ValueError, match="image_levels must be"):
        data.TrainConfig("llava", 1, image_levels=(0, 9))


@pytest.mark.parametrize("lengths", [[16, 16, 16], [8, 24, 4]])
def test_packed_sdpa_matches_attention_per_chunk(lengths):
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 1, 2, sum(lengths), 8).unbind(0)
    bounds = torch.tensor([0, *np.cumsum(lengths)])
    out, _ = loop.packed_sdpa(None, query, key, value, scaling=0.3, cu_seq_lens_q=bounds)
    longest = max(lengths)  # told the longest chunk, equal chunks are found without a host sync
    told, _ = loop.packed_sdpa(None, query, key, value, scaling=0.3, cu_seq_lens_q=bounds, max_length_q=longest)
    torch.testing.assert_close(told, out)
    start = 0
    for n in lengths:
        q, k, v = (t[:, :, start : start + n] for t in (query, key, value))
        expected = torch.softmax(q @ k.transpose(-1, -2) * 0.3, -1) @ v  # [1, H, n, D]
        torch.testing.assert_close(out[:, start : start + n], expected.transpose(1, 2))
        start += n


def test_qwen_trains_with_packed_vision_attention_and_keeps_its_backend():
    model, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    batch = synthetic.image_batch(3, 0, synthetic.IMAGE_CURRICULUM[-1], size=fixtures.SMALL.image_size)
    inputs = training_inputs(processor, [q.text for q in batch.questions], ["red"] * 3, "image", batch.images)
    inputs.pop("labels")
    with torch.no_grad():
        reference = model(**inputs).logits
        with loop._packed_vision_attention(model):
            assert "flash" in model.config.vision_config._attn_implementation  # routes cu_seqlens to one call
            packed = model(**inputs).logits
    assert model.config.vision_config._attn_implementation == "sdpa"
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", [0, 1])  # a video batch, then an image batch
def test_qwen_index_gives_the_models_own_positions(step):
    """The host-made index tensors (``QwenIndex``) leave the model's output exactly as it is without them."""
    model, processor = fixtures.build("qwen2_5_vl", spec=fixtures.SMALL)
    cfg = data.TrainConfig("qwen2_5_vl", steps=2, batch_size=8, video_every=2, video_batch_size=3)
    batch = data.step_examples(processor, cfg, 1 - step)
    index = QwenIndex(model.config)(processor, batch)
    medium = "image" if "images" in batch else "video"
    assert index["position_ids"].shape == (3, *batch["input_ids"].shape)
    assert {k.split("_")[0] for k in index} == {"position", medium}
    inputs = loop._on_device(processor, batch, torch.device("cpu"))
    inputs.pop("labels")
    with torch.no_grad(), loop._packed_vision_attention(model):
        reference = model(**inputs).logits
        fast = model(**inputs, **index).logits
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)


@pytest.mark.parametrize(("every", "videos"), [(0, []), (1, [0, 1, 2, 3, 4, 5]), (2, [1, 3, 5]), (3, [2, 5])])
def test_video_steps(every, videos):
    cfg = data.TrainConfig("qwen2_5_vl", 6, video_every=every)
    assert [s for s in range(6) if cfg.is_video_step(s)] == videos
    assert not any(data.TrainConfig("gemma3", 6, video_every=every).is_video_step(s) for s in range(6))


def test_the_installed_package_holds_no_training_loop():
    """The trainer lives in training/, which is not installed and which nothing installed imports: the product
    ships the fixtures' loading and encoding only."""
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    packages = re.search(r"^packages = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)[1]
    assert "vlmzip.eval" in packages and "training" not in packages, packages
    sources = [path for part in ("vlmzip", "adapters", "kernels", "eval") for path in (root / part).rglob("*.py")]
    assert len(sources) > 20
    imports = re.compile(r"^\s*(?:from|import)\s+training\b", re.MULTILINE)
    loop_parts = re.compile(r"\.backward\(|optimizer\.step\(|torch\.optim\.|def train\(|TrainConfig")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not imports.search(text), f"{path} imports the trainer"
        assert not loop_parts.search(text), f"{path} holds training-loop code"


def test_every_recorded_round_runs_on_todays_trainer(tmp_path, monkeypatch):
    """training/rounds.tsv is the record that reproduces the shipped fixtures: every round's flags must still be a
    valid run of the trainer (its init fixtures are not here, so the spec is SMALL and nothing is built)."""
    root = Path(__file__).resolve().parents[1]
    lines = [line for line in (root / "training" / "rounds.tsv").read_text().splitlines() if not line.startswith("#")]
    rounds = {line.split("|")[0] for line in lines}
    assert {str(n) for n in range(1, 30)} <= rounds and "29-qwen-narrow" in rounds
    ran = []
    monkeypatch.setattr(loop, "_run_spec", lambda cfg, spec=None, changes=(): fixtures.SMALL)
    monkeypatch.setattr(loop, "_fit", lambda cfg, spec, *rest: ran.append(cfg))
    for line in lines:
        _, name, gpu, flags = line.split("|")
        assert gpu.isdigit(), line
        argv = flags.replace("$INIT", str(tmp_path / "init")).split()
        assert loop.main(["train", *argv, "--out", str(tmp_path / name)]) == 0, line
    assert len(ran) == len(lines)
    shipped = {cfg.family: cfg for line, cfg in zip(lines, ran) if line.startswith("29|")}  # then the narrowing
    assert shipped["llava"].steps == 6000 and shipped["gemma3"].steps == 1500 and shipped["qwen2_5_vl"].steps == 3400


def test_launch_sh_reads_a_rounds_runs():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY": "1", "INIT": "/init"}
    out = subprocess.run(
        ["bash", "training/launch.sh", "29", "llava"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(out) == 1 and out[0].startswith("llava|1|--family llava --steps 6000 --resume")
    assert "--init /init/llava --spec text_intermediate=256" in out[0]


def test_docs_hold_the_product_and_no_run_logs():
    """Lab notes, launchers and run logs belong under training/, summarised; docs/ explains the product."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert sorted(p.name for p in docs.rglob("*") if p.suffix != ".md") == []
