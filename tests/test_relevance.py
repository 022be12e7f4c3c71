"""Relevance to the question (``vlmzip.relevance``): the ``text`` and ``image`` signals, ``text-relevance`` with and
without an OpenCLIP model, and ``cdpruner``'s ``clip=`` relevance term.

The OpenCLIP tests build a tiny randomly initialised CLIP from a config (no downloads) and save it in open_clip's
local-directory layout; they skip where open_clip cannot be imported (CI's CPU torch has no matching torchvision).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import batch_of_two, greedy, max_logit_diff
from torch.nn import functional as F

import vlmzip
from vlmzip.errors import PolicyError, UnsupportedModelError
from vlmzip.eval.bench import Workload, build, run
from vlmzip.eval.clip import save_random_clip, with_word_tokenizer
from vlmzip.eval.tiny import random_inputs, split_batch, tiny_model
from vlmzip.methods.cdpruner import CDPruner
from vlmzip.methods.text_relevance import TextRelevance
from vlmzip.registry import adapter_for
from vlmzip.relevance import OPENCLIP_INSTALL, embedding_relevance
from vlmzip.stages import unit_features


def _open_clip():
    try:
        import open_clip

        return open_clip
    except Exception as error:  # not installed, or a torchvision built for another torch (RuntimeError)
        return f"{type(error).__name__}: {error}"


OPEN_CLIP = _open_clip()
needs_open_clip = pytest.mark.skipif(
    isinstance(OPEN_CLIP, str),
    reason=f"open_clip_torch cannot be imported here ({OPEN_CLIP}); `{OPENCLIP_INSTALL}` with a torchvision built for "
    "this torch runs these tests",
)
QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
CLIP_CONFIG = {
    "embed_dim": 16,
    # 16x16 input in 2x2 patches: an 8x8 patch grid, pooled to the tiny models' 4x4 token grids
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 2},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_PREPROCESS = {"mean": [0.4, 0.45, 0.5], "std": [0.25, 0.26, 0.27]}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random OpenCLIP model saved as open_clip's local-directory layout (config + weights)."""
    if isinstance(OPEN_CLIP, str):
        pytest.skip(f"open_clip_torch cannot be imported here ({OPEN_CLIP})")
    return save_random_clip(tmp_path_factory.mktemp("clip"), CLIP_CONFIG, CLIP_PREPROCESS)


def _spy(monkeypatch, method_class):
    """Record ``(method, items, selections)`` of every ``select_batch`` call of ``method_class``."""
    seen, original = [], method_class.select_batch

    def spy(self, items):
        selections = original(self, items)
        seen.append((self, items, selections))
        return selections

    monkeypatch.setattr(method_class, "select_batch", spy)
    return seen


def vision_patch(model) -> int:
    return model.config.vision_config.patch_size


def _inputs(model, family):
    videos = {"video_frames": [4, 2]} if family in QWEN else {}
    return random_inputs(model, [1, 2], text_lengths=[3, 7], **videos)


# -- the signals -------------------------------------------------------------------------------------------------
class _Signals(TextRelevance):
    """text-relevance that also reads the text and image signals (to check them without a CLIP)."""

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"text", "image", "text_embeddings"})


def test_text_is_the_question_and_image_the_pixels_the_tower_saw(family, tmp_path, monkeypatch):
    model = with_word_tokenizer(tiny_model(family), tmp_path)
    inputs = _inputs(model, family)
    seen = _spy(monkeypatch, _Signals)
    towers = []  # what each tower forward was given (anyres: the crops of every image)
    adapter_for(model).vision_tower.register_forward_pre_hook(
        lambda module, args, kwargs: towers.append(args[0] if args else kwargs.get("pixel_values")), with_kwargs=True
    )
    vlmzip.compress(model, vlmzip.Policy(vision=_Signals(keep=4)))
    greedy(model, inputs, 1)
    items = [item for _, items, _ in seen for item in items]
    assert len(items) == len(adapter_for(model).visual_items(inputs, []))  # Qwen: 3 images, 2 videos
    ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    adapter = adapter_for(model)
    for item in items:
        after = max(int(o.positions.max()) for o in items if o.sample == item.sample)
        row = ids[item.sample]
        words = [f"w{int(i)}" for p, i in enumerate(row.tolist()) if p > after and valid[item.sample, p]]
        assert item.signals["text"] == " ".join(words)
        image = item.signals["image"]
        frames, rows, cols = item.grid
        assert image.dim() == 4 and image.shape[1] == 3 and len(image) % frames == 0
        assert image.shape[2] % rows == 0 and image.shape[3] % cols == 0 and 0 <= image.min() <= image.max() <= 1
        mean, std = torch.tensor(adapter.image_mean), torch.tensor(adapter.image_std)
        normalised = (image - mean[:, None, None]) / std[:, None, None]
        if family in QWEN:  # the processor's patch rows: (t, h/m, w/m, m, m) x (C, tp, p, p)
            kind = "image" if item.kind == "image" else "video"
            grids = inputs[f"{kind}_grid_thw"]
            own = inputs["pixel_values" if kind == "image" else "pixel_values_videos"].split(grids.prod(1).tolist())
            own = own[item.kind_index].view(len(own[item.kind_index]), 3, -1)
            vision = model.config.vision_config
            p, m, tp = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
            t, h, w = grids[item.kind_index].tolist()
            got = normalised.view(t, tp, 3, h // m, m, p, w // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
            got, trailing = got.reshape(own.shape), [1]
        elif item.view is not None:  # an anyres view: its crops side by side, cut to its window of patches
            (rows, cols), (top, left, height, width), patch = item.view.crops, item.view.window, vision_patch(model)
            crops = towers[0][item.view.first : item.view.first + rows * cols]
            side = crops.shape[-1]
            own = crops.view(rows, cols, 3, side, side).permute(2, 0, 3, 1, 4).reshape(3, rows * side, cols * side)
            own = own[:, top * patch : (top + height) * patch, left * patch : (left + width) * patch]
            got, trailing = normalised[0], [1, 1]
        else:
            own, got, trailing = inputs["pixel_values"][item.kind_index], normalised[0], [1, 1]
        # random test pixels leave [0, 1]; the signal holds what a picture can
        low, high = (-mean / std).view(3, *trailing), ((1 - mean) / std).view(3, *trailing)
        torch.testing.assert_close(got, own.float().clamp(low, high), rtol=0, atol=1e-5)


def test_text_is_all_the_samples_text_where_nothing_follows_its_images(tmp_path, monkeypatch):
    model = with_word_tokenizer(tiny_model("llava"), tmp_path)
    inputs = random_inputs(model, [1], text_lengths=[4])
    ids = inputs["input_ids"][0]
    visual = ids == model.config.image_token_id
    inputs["input_ids"] = ids[torch.cat([(~visual).nonzero(), visual.nonzero()]).flatten()][None]  # image last
    seen = _spy(monkeypatch, _Signals)
    vlmzip.compress(model, vlmzip.Policy(vision=_Signals(keep=4)))
    greedy(model, inputs, 1)
    assert seen[0][1][0].signals["text"] == " ".join(f"w{i}" for i in ids[~visual].tolist())


def test_a_method_that_reads_text_needs_the_models_tokenizer():
    model = tiny_model("llava")  # built from a config: no directory, no tokenizer
    with pytest.raises(UnsupportedModelError, match="tokenizer.*name_or_path"):
        vlmzip.compress(model, vlmzip.Policy(vision=_Signals(keep=4)))
    assert vlmzip.policy_of(model) is None


# -- text-relevance without a CLIP: the language model's own embeddings ---------------------------------------------
def test_without_clip_it_keeps_the_tokens_closest_to_the_text_embeddings(monkeypatch):
    model = tiny_model("llava")
    seen = _spy(monkeypatch, TextRelevance)
    vlmzip.compress(model, "text-relevance:keep=5")
    greedy(model, random_inputs(model, [1, 2], text_lengths=[3, 7]), 1)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [5, 10]
    for _, items, selections in seen:
        for item, selection in zip(items, selections):
            unit = F.normalize(item.features.float(), dim=-1)
            text = F.normalize(item.signals["text_embeddings"].float(), dim=-1)
            score = (unit @ text.T).mean(dim=1)
            assert selection.keep.tolist() == sorted(score.argsort(descending=True)[:5].tolist())


def test_a_string_names_clip_only_when_set():
    assert str(vlmzip.Policy.coerce("text-relevance:keep=8")) == "text-relevance:keep=8"
    assert str(vlmzip.Policy.coerce("cdpruner")) == "cdpruner:keep=64"
    assert TextRelevance().needs == {"text_embeddings"}


def test_importing_vlmzip_does_not_import_open_clip():
    code = "import sys, vlmzip; vlmzip.compress; assert 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "clip, words",
    [
        ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", ["looks like a hub name", "--local-dir DIR", "clip=DIR"]),
        ("hf-hub:laion/CLIP-ViT-B-16", ["looks like a hub name"]),
        ("/no/such/clip/dir", ["does not exist", "open_clip_config.json"]),
    ],
)
def test_a_clip_that_is_not_a_local_directory_is_refused_when_parsed(clip, words):
    for method in ("text-relevance", "cdpruner"):
        with pytest.raises(PolicyError) as error:
            vlmzip.Policy.coerce(f"{method}:keep=8,clip={clip}")
        assert all(word in str(error.value) for word in [method, *words]), str(error.value)


def test_a_directory_without_config_or_weights_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="has no open_clip_config.json"):
        TextRelevance(clip=str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG}))
    method = TextRelevance(clip=str(tmp_path / "open_clip_config.json"))  # the config file names its directory
    with pytest.raises(PolicyError, match="no weights"):
        vlmzip.compress(tiny_model("llava"), vlmzip.Policy(vision=method))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"text_cfg": {"hf_model_name": "org/some-text-model"}}, "fetch from the hub"),
        ({"vision_cfg": {"timm_model_name": "vit_base_patch16_224"}}, "timm or attention-pooled"),
    ],
)
def test_a_clip_that_would_reach_the_hub_or_has_no_patch_tokens_is_refused(tmp_path, change, words):
    config = {key: {**CLIP_CONFIG[key], **change.get(key, {})} for key in ("vision_cfg", "text_cfg")}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**CLIP_CONFIG, **config}}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(PolicyError, match=words):
        vlmzip.compress(tiny_model("llava"), vlmzip.Policy(vision=TextRelevance(clip=str(tmp_path))))


def test_without_open_clip_the_error_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises ImportError
    model = tiny_model("llava")
    for method in (TextRelevance(clip=str(tmp_path)), CDPruner(clip=str(tmp_path))):
        with pytest.raises(PolicyError, match=r"pip install 'vlmzip\[openclip\]'"):
            vlmzip.compress(model, vlmzip.Policy(vision=method))
    assert vlmzip.policy_of(model) is None
    vlmzip.compress(model, "text-relevance:keep=4")  # every method without a CLIP still works
    greedy(model, random_inputs(model, [1], text_lengths=[3]), 1)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [4]


@pytest.mark.parametrize(
    "policy, words",
    [
        ("text-relevance:keep=0", ["keep"]),
        ("text-relevance:keep=1.5", ["keep"]),
        ("text-relevance:tau=0.5", ["unknown parameter 'tau'"]),
    ],
)
def test_bad_parameters_name_the_problem(policy, words):
    with pytest.raises(PolicyError) as error:
        vlmzip.Policy.coerce(policy)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_the_clip_signals_exist_after_the_tower_only(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG}))
    with pytest.raises(PolicyError, match="exist only after the tower"):
        vlmzip.compress(tiny_model("qwen2_vl"), vlmzip.Policy(vision=TextRelevance(clip=str(tmp_path), at_layer=1)))


# -- with an OpenCLIP model ----------------------------------------------------------------------------------------
def _reference_relevance(clip_model, item) -> torch.Tensor:
    """CLIP text embedding of the item's question against its frames' patch embeddings pooled to its token grid,
    written out from the CLIP's modules (not through vlmzip.relevance)."""
    tokenizer = OPEN_CLIP.SimpleTokenizer(context_length=CLIP_CONFIG["text_cfg"]["context_length"])
    with torch.no_grad():
        text = F.normalize(clip_model.encode_text(tokenizer([item.signals["text"]])), dim=-1)[0]
        size = CLIP_CONFIG["vision_cfg"]["image_size"]
        frames = F.interpolate(item.signals["image"], size=(size, size), mode="bicubic", antialias=True)
        mean = torch.tensor(CLIP_PREPROCESS["mean"])[:, None, None]
        std = torch.tensor(CLIP_PREPROCESS["std"])[:, None, None]
        visual = clip_model.visual
        hidden = visual.conv1((frames - mean) / std).flatten(2).transpose(1, 2)  # [F, patches, width]
        cls = visual.class_embedding.expand(len(hidden), 1, -1)
        hidden = visual.ln_pre(torch.cat([cls, hidden], dim=1) + visual.positional_embedding)
        patches = visual.ln_post(visual.transformer(hidden)[:, 1:]) @ visual.proj  # [F, g * g, E]
    grid = visual.grid_size[0]
    t, rows, cols = item.grid
    blocks = patches.reshape(t, -1, rows, grid // rows, cols, grid // cols, patches.shape[-1])
    tokens = blocks.mean(dim=(1, 3, 5)).reshape(t * rows * cols, -1)
    return F.normalize(tokens, dim=-1) @ text


def _clip_model(directory):
    model = OPEN_CLIP.create_model(f"local-dir:{directory}", load_weights=True)
    return model.eval()


@needs_open_clip
def test_clip_relevance_equals_a_plain_recomputation(family, clip_dir, tmp_path, monkeypatch):
    model = with_word_tokenizer(tiny_model(family), tmp_path)
    seen = _spy(monkeypatch, TextRelevance)
    vlmzip.compress(model, f"text-relevance:keep=5,clip={clip_dir}")
    greedy(model, _inputs(model, family), 1)
    reference_clip = _clip_model(clip_dir)
    for method, items, selections in seen:
        for item, selection in zip(items, selections):
            expected = _reference_relevance(reference_clip, item)
            got = method.relevance([item], unit_features([item]))[0]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
            assert selection.keep.tolist() == sorted(expected.argsort(descending=True)[:5].tolist())
    assert len({item.signals["text"] for _, items, _ in seen for item in items}) == 2  # one question per sample


@needs_open_clip
def test_clip_counts_are_exact_and_a_batch_equals_each_sample_alone(family, backend, clip_dir, tmp_path):
    model = with_word_tokenizer(tiny_model(family, attn_implementation=backend), tmp_path)
    batch = batch_of_two(model)
    vlmzip.compress(model, f"text-relevance:keep=0.25,clip={clip_dir}")
    together = greedy(model, batch, 2)
    stats = vlmzip.stats(model)
    assert stats.visual_tokens_kept["vision"] == [n // 4 for n in stats.visual_tokens_in]
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single, 2)
        shift = batch["input_ids"].shape[1] - single["input_ids"].shape[1]
        assert vlmzip.stats(model).visual_positions_kept["vision"][0] == [
            p - shift for p in stats.visual_positions_kept["vision"][row]
        ]
        assert torch.equal(alone.sequences[0, -2:], together.sequences[row, -2:])


@needs_open_clip
@pytest.mark.parametrize("qwen", QWEN)
def test_clip_scores_videos_with_exact_counts(qwen, clip_dir, tmp_path):
    model = with_word_tokenizer(tiny_model(qwen), tmp_path)
    batch = random_inputs(model, [1, 0, 2], text_lengths=[4, 6, 5], video_frames=[4, 2, 0])
    for method in ("text-relevance", "cdpruner"):
        vlmzip.compress(model, f"{method}:keep=0.25,clip={clip_dir}")
        greedy(model, batch, 1)
        assert vlmzip.stats(model).visual_tokens_kept["vision"] == [12, 4, 8], method


@needs_open_clip
def test_clip_keep_everything_equals_the_unwrapped_model(family, clip_dir, tmp_path):
    model = with_word_tokenizer(tiny_model(family), tmp_path)
    batch = _inputs(model, family)
    reference = greedy(model, batch, 3)
    for method in ("text-relevance", "cdpruner"):
        vlmzip.compress(model, f"{method}:keep=1.0,clip={clip_dir}")
        out = greedy(model, batch, 3)
        assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-5, method
    vlmzip.restore(model)


@needs_open_clip
def test_cdpruner_clip_relevance_replaces_the_text_embedding_term(clip_dir, tmp_path, monkeypatch):
    model = with_word_tokenizer(tiny_model("llava"), tmp_path)
    batch = random_inputs(model, [2, 2], text_lengths=[5, 7])
    seen = _spy(monkeypatch, CDPruner)
    chosen = {}
    for policy in (f"cdpruner:keep=4,clip={clip_dir}", "cdpruner:keep=4"):
        vlmzip.compress(model, policy)
        greedy(model, batch, 1)
        chosen[policy] = [s.keep.tolist() for s in seen[-1][2]]
    (with_clip, clip_items, _), (without, text_items, _) = seen
    clip_term = with_clip.relevance(clip_items, unit_features(clip_items, torch.float64))
    text_term = without.relevance(text_items, unit_features(text_items, torch.float64))
    reference = _clip_model(clip_dir)
    for item, row in zip(clip_items, clip_term):
        torch.testing.assert_close(row.float(), _reference_relevance(reference, item), rtol=1e-4, atol=1e-5)
    for item, u, row in zip(text_items, unit_features(text_items, torch.float64), text_term):
        torch.testing.assert_close(row, embedding_relevance(u, item.signals["text_embeddings"]))
    assert not torch.allclose(clip_term, text_term)
    assert chosen[f"cdpruner:keep=4,clip={clip_dir}"] != chosen["cdpruner:keep=4"]


@needs_open_clip
def test_the_clip_is_loaded_once_per_method_and_moved_with_the_model(clip_dir, tmp_path):
    model = with_word_tokenizer(tiny_model("llava"), tmp_path)
    method = TextRelevance(keep=4, clip=str(clip_dir))
    vlmzip.compress(model, vlmzip.Policy(vision=method))  # loads it (a checkpoint that does not load fails here)
    loaded = method.clip_model
    model.to(torch.float64)
    greedy(model, random_inputs(model, [1], text_lengths=[3]), 1)
    assert method.clip_model is loaded and loaded.model.visual.proj.dtype == torch.float64
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [4]


# -- vlmzip bench: random models carry a tokenizer, so a clip= policy runs on them ------------------------------------
def test_bench_models_carry_a_tokenizer_for_the_question(monkeypatch):
    model = build("tiny-qwen2_vl", device="cpu", dtype=torch.float32)
    seen = _spy(monkeypatch, _Signals)
    vlmzip.compress(model, vlmzip.Policy(vision=_Signals(keep=4)))
    inputs = Workload(images=1, frame_patches=8, text_tokens=5).inputs(model, 2)
    greedy(model, inputs, 1)
    ids = inputs["input_ids"]
    for item in (item for _, items, _ in seen for item in items):
        after = ids[item.sample, int(item.positions.max()) + 1 :]
        assert item.signals["text"] == " ".join(f"w{i}" for i in after.tolist())


@needs_open_clip
def test_bench_measures_a_clip_policy(clip_dir):
    model = build("tiny-llava", device="cpu", dtype=torch.float32)
    policies = [f"text-relevance:keep=4,clip={clip_dir}", f"cdpruner:keep=4,clip={clip_dir}"]
    results = run(model, policies, [2], Workload(text_tokens=6), new_tokens=2, repeats=1)
    assert [r.visual_tokens_kept for r in results[2:]] == [{"vision": [4, 4]}] * 2
