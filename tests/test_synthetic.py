"""The synthetic data generator: determinism, split disjointness, answers re-derived from the scene model
(independently of the question code), renderer against a brute-force reference, and the on-disk formats
(Video-MME parquet, MP4 round trip, SRT)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmzip.eval import synthetic as S

SEED = 7


# ----------------------------------------------------------------------------------------------------
# Independent re-derivation of answers
# ----------------------------------------------------------------------------------------------------


def _name(o: S.Obj) -> str:
    return f"{o.colour} {o.shape}"


def _cell(o: S.Obj) -> tuple[int, int]:
    return o.y // S.SUB, o.x // S.SUB


def image_truth(scene: S.Scene, q: S.Question) -> set[str]:
    """The set of answer words that are true of ``scene`` for ``q`` (asserting the question is well posed)."""
    objs, p, f = scene.objects, dict(q.params), q.family

    def the(pred) -> S.Obj:
        found = [o for o in objs if pred(o)]
        assert len(found) == 1, (q, scene)
        return found[0]

    def pos(o: S.Obj) -> str:
        return S.position_name(*_cell(o), scene.grid)

    if f == "colour_of_shape":
        assert p["shape"] in q.text
        return {the(lambda o: o.shape == p["shape"]).colour}
    if f == "shape_of_colour":
        assert p["colour"] in q.text
        return {the(lambda o: o.colour == p["colour"]).shape}
    if f in ("colour_at_position", "shape_at_position"):
        o = the(lambda o: _cell(o) == (int(p["row"]), int(p["col"])))
        assert f"at the {pos(o)}?" in q.text
        return {o.colour if f == "colour_at_position" else o.shape}
    if f == "position_of":
        assert p["object"] in q.text
        return {pos(the(lambda o: _name(o) == p["object"]))}
    if f == "count_shape":
        assert S.PLURALS[p["shape"]] in q.text
        return {str(sum(o.shape == p["shape"] for o in objs))}
    if f == "count_colour":
        assert p["colour"] in q.text
        return {str(sum(o.colour == p["colour"] for o in objs))}
    if f == "colour_of_small":
        return {the(lambda o: o.size == "small").colour}
    if f == "larger":
        a, b = the(lambda o: _name(o) == p["a"]), the(lambda o: _name(o) == p["b"])
        assert a.size != b.size and p["a"] in q.text and p["b"] in q.text
        return {_name(a) if a.size == "large" else _name(b)}
    if f == "relation":
        a, b = the(lambda o: _name(o) == p["a"]), the(lambda o: _name(o) == p["b"])
        (ra, ca), (rb, cb) = _cell(a), _cell(b)
        truth = set()
        if ra == rb:
            truth.add("left" if ca < cb else "right")
        if ca == cb:
            truth.add("above" if ra < rb else "below")
        assert len(truth) == 1
        return truth
    if f == "exists":
        return {_name(o) for o in objs}
    raise AssertionError(f"no re-derivation for {f}")


def _visibility(tl: S.Timeline) -> dict[str, list[tuple[int, S.Obj]]]:
    """Per shape, the frames it is visible on (from the rendered-state model, not from the tracks)."""
    vis: dict[str, list[tuple[int, S.Obj]]] = defaultdict(list)
    for t, scene in enumerate(S.timeline_frames(tl)):
        shapes = [o.shape for o in scene.objects]
        assert len(shapes) == len(set(shapes))
        assert len({_cell(o) for o in scene.objects}) == len(shapes)  # one object per cell, movers included
        for o in scene.objects:
            vis[o.shape].append((t, o))
    for frames in vis.values():  # visibility is one contiguous run
        ts = [t for t, _ in frames]
        assert ts == list(range(ts[0], ts[-1] + 1))
    return vis


def _observed_events(tl: S.Timeline, vis) -> dict[str, int]:
    """Event phrase -> frame, observed in the per-frame states."""
    events = {}
    for s, frames in vis.items():
        first, last = frames[0][0], frames[-1][0]
        if first > 0:
            events[f"the {s} appeared"] = first
        if last < tl.n_frames - 1:
            events[f"the {s} disappeared"] = last + 1
        (_, o0), (_, o1) = frames[0], frames[-1]
        for (_, prev), (t, cur) in zip(frames, frames[1:]):
            if cur.colour != prev.colour:
                events[f"the {s} turned {cur.colour}"] = t
        moved = [t for (_, prev), (t, cur) in zip(frames, frames[1:]) if (cur.x, cur.y) != (prev.x, prev.y)]
        if moved:
            events[f"the {s} moved {_direction(o0, o1)}"] = moved[0]
    return events


def _direction(o0: S.Obj, o1: S.Obj) -> str:
    dx, dy = o1.x - o0.x, o1.y - o0.y
    assert (dx == 0) != (dy == 0) and abs(dx + dy) == S.SUB
    return ("left" if dx < 0 else "right") if dx else ("up" if dy < 0 else "down")


def video_truth(tl: S.Timeline, q: S.Question) -> set[str]:
    vis = _visibility(tl)
    f, p, last_frame = q.family, dict(q.params), tl.n_frames - 1
    if f == "appeared_last":
        late = {s: fr[0][0] for s, fr in vis.items() if fr[0][0] > 0}
        winners = [s for s, t in late.items() if t == max(late.values())]
        assert len(winners) == 1
        return set(winners)
    if f == "event_order":
        events = _observed_events(tl, vis)
        real = {c: events[c] for c in q.choices if c in events}
        first = min(real.values())
        assert list(real.values()).count(first) == 1
        return {c for c, t in real.items() if t == first}
    if f == "move_direction":
        fr = vis[p["shape"]]
        return {_direction(fr[0][1], fr[-1][1])}
    if f == "count_seen":
        return {str(len(vis))}
    if f == "count_end":
        return {str(len(S.timeline_frames(tl)[-1].objects))}
    if f in ("recolour", "colour_before"):
        fr = vis[p["shape"]]
        c0, c1 = fr[0][1].colour, fr[-1][1].colour
        assert c0 != c1
        return {c1 if f == "recolour" else c0}
    if f == "disappeared":
        return {s for s, fr in vis.items() if fr[-1][0] < last_frame}
    if f in ("brief_shape", "brief_colour"):
        brief = [s for s, fr in vis.items() if len(fr) <= 2]
        assert len(brief) == 1 and all(len(fr) >= 4 for s, fr in vis.items() if s != brief[0])
        return {brief[0] if f == "brief_shape" else vis[brief[0]][0][1].colour}
    if f == "position_at_end":
        (_, o0), (t, o) = vis[p["shape"]][0], vis[p["shape"]][-1]
        assert t == last_frame and (o.x - o0.x) % S.SUB == 0 and (o.y - o0.y) % S.SUB == 0  # at rest
        return {S.position_name(*_cell(o), tl.grid)}
    raise AssertionError(f"no re-derivation for {f}")


def check_question(q: S.Question, truth: set[str]) -> None:
    assert len(q.options) == 4
    assert [o[:3] for o in q.options] == ["A. ", "B. ", "C. ", "D. "]
    assert len(set(q.choices)) == 4, q  # distractors distinct
    assert q.answer in "ABCD"
    true = [c for c in q.choices if c in truth]
    assert true == [q.answer_word], (q, truth)


# ----------------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------------


def test_image_answers_rederived_from_scene():
    rng = S.split_rng(SEED, "image", "train")
    families, letters = Counter(), Counter()
    for _ in range(2500):
        scene, q = S.sample_image_item(rng)
        check_question(q, image_truth(scene, q))
        families[q.family] += 1
        letters[q.answer] += 1
        if q.family in ("colour_of_shape", "colour_at_position", "colour_of_small"):
            others = {o.colour for o in scene.objects} - {q.answer_word}  # distractors come from the scene first
            assert len(others & set(q.choices)) == min(3, len(others))
    assert set(families) == set(S.IMAGE_FAMILIES)
    assert min(letters.values()) > 500


def test_video_answers_rederived_from_frames():
    rng = S.split_rng(SEED, "video", "train")
    families = Counter()
    for _ in range(400):
        tl, qs = S.sample_video_item(rng)
        assert len({q.family for q in qs}) == 3
        if any(tr.brief for tr in tl.tracks):
            assert sum(q.family in S.BRIEF_FAMILIES for q in qs) == 1
        for q in qs:
            check_question(q, video_truth(tl, q))
            families[q.family] += 1
        assert S.VideoDifficulty().min_frames <= tl.n_frames <= S.VideoDifficulty().max_frames
    assert set(families) == set(S.VIDEO_FAMILIES)


def test_curriculum_levels():
    rng = np.random.default_rng(0)
    for level in S.IMAGE_CURRICULUM:
        batch = S.image_batch(40, rng, level, size=32)
        assert batch.images.shape == (40, 3, 32, 32) and batch.images.dtype == torch.uint8
        for scene, q in zip(batch.scenes, batch.questions):
            assert level.min_objects <= len(scene.objects) <= level.max_objects
            assert q.family in level.families
    for level in S.VIDEO_CURRICULUM:
        vb = S.video_batch(6, rng, level, n_questions=2, size=16)
        for video, tl, qs in zip(vb.videos, vb.timelines, vb.questions):
            assert video.shape == (tl.n_frames, 3, 16, 16)
            assert len(qs) == 2 and all(q.family in level.families for q in qs)
    prompt = S.mc_prompt(batch.questions[0], "video")
    assert prompt.endswith("\nThe best answer is:") and "\n".join(batch.questions[0].options) in prompt
    with pytest.raises(ValueError):
        S.ImageDifficulty(1, 1, ("relation",))


# ----------------------------------------------------------------------------------------------------
# Splits and determinism
# ----------------------------------------------------------------------------------------------------


def test_splits_disjoint_by_content():
    tiny = S.ImageDifficulty(1, 1, ("colour_of_shape",), jitter=0.0)  # only 864 distinct scenes
    keys = {}
    for split in S.SPLITS:
        rng = S.split_rng(SEED, "image", split)
        scenes = [S.sample_image_item(rng, tiny, split)[0] for _ in range(300)]
        assert all(S.content_split(s) == split for s in scenes)
        keys[split] = {repr(s) for s in scenes}
    assert len(keys["train"]) < 300  # the space is small enough to repeat ...
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]  # ... but never across splits
    assert not keys["validation"] & keys["test"]
    for split in S.SPLITS:
        rng = S.split_rng(SEED, "video", split)
        assert all(S.content_split(S.sample_video_item(rng, None, split)[0]) == split for _ in range(20))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    S.main(["--out", str(out), "--images", "40", "--videos", "20", "--seed", str(SEED)])
    return out


def test_cli_layout_and_determinism(written, tmp_path):
    for split in S.SPLITS:
        assert (written / "image" / f"{split}.jsonl").is_file()
        assert (written / "video" / split / S.VIDEOMME_PARQUET).is_file()
    S.write_all(tmp_path / "same", 40, 20, SEED)
    assert _tree_digest(written) == _tree_digest(tmp_path / "same")  # same seed -> same bytes
    S.write_all(tmp_path / "other", 40, 0, SEED + 1)
    assert (tmp_path / "other/image/train.jsonl").read_bytes() != (written / "image/train.jsonl").read_bytes()


def test_image_files(written):
    root, seen = written / "image", {}
    from PIL import Image

    for split in S.SPLITS:
        records = S.load_image_set(root, split)
        assert len(records) == S.split_counts(40)[split]
        pixels = S.render([r.scene for r in records], 64).permute(0, 2, 3, 1).numpy()
        for rec, px in zip(records, pixels):
            assert S.content_split(rec.scene) == split
            check_question(rec.question, image_truth(rec.scene, rec.question))
            assert np.array_equal(np.asarray(Image.open(rec.image).convert("RGB")), px)
            key = hashlib.sha256((repr(rec.scene) + json.dumps(rec.question.to_json())).encode()).hexdigest()
            assert seen.setdefault(key, split) == split  # no (scene, question) pair in two splits


# ----------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------


def _reference_render(scene: S.Scene, size: int) -> np.ndarray:
    """Brute force: every object tested on every pixel of the frame, higher colour index on top."""
    span = scene.grid * S.SUB
    centres = (2 * torch.arange(size, dtype=torch.int64) + 1) * span
    label = torch.zeros(size, size, dtype=torch.int64)
    for o in scene.objects:
        u, v = centres[None, :] - 2 * size * o.x, centres[:, None] - 2 * size * o.y
        inside = S.shape_mask(o.shape, u, v, 2 * size * S.RADIUS[o.size])
        label = torch.where(inside, torch.clamp(label, min=list(S.COLOURS).index(o.colour) + 1), label)
    lut = np.array([S.BACKGROUND, *S.COLOURS.values()], dtype=np.uint8)
    return lut[label.numpy()]


def test_renderer_matches_reference():
    rng = np.random.default_rng(3)
    scenes = [S.sample_scene(rng, S.ImageDifficulty(1, 9)) for _ in range(12)]
    scenes += [S.sample_scene(rng, S.ImageDifficulty(1, 16, grid=4)) for _ in range(4)]
    for size in (17, 64, 97, 400):  # 400 takes the int64 path
        got = S.render(scenes if size < 400 else scenes[:3], size).permute(0, 2, 3, 1).numpy()
        for scene, img in zip(scenes, got):
            assert np.array_equal(img, _reference_render(scene, size)), (size, scene)


def test_render_shows_every_object():
    rng = np.random.default_rng(4)
    scenes = [S.sample_scene(rng, S.ImageDifficulty(3, 6)) for _ in range(50)]
    labels = S.classify_colours(S.render(scenes, 64).permute(0, 2, 3, 1).numpy())
    cell_px = 64 / 3
    for scene, lab in zip(scenes, labels):
        for o in scene.objects:
            r, c = _cell(o)
            patch = lab[int(r * cell_px) + 1 : int((r + 1) * cell_px), int(c * cell_px) + 1 : int((c + 1) * cell_px)]
            count = (patch == list(S.COLOURS).index(o.colour) + 1).sum()
            assert count >= (12 if o.size == "small" else 60), (o, count)
        assert (lab == 0).mean() > 0.3


# ----------------------------------------------------------------------------------------------------
# Videos on disk
# ----------------------------------------------------------------------------------------------------


def _regenerate(split: str, n: int) -> list[tuple[S.Timeline, tuple[S.Question, ...]]]:
    rng = S.split_rng(SEED, "video", split)
    return [S.sample_video_item(rng, None, split, 3) for _ in range(n)]


def test_parquet_has_videomme_columns(written):
    import pyarrow.parquet as pq

    all_ids = set()
    for split in S.SPLITS:
        root = written / "video" / split
        table = pq.read_table(root / S.VIDEOMME_PARQUET)
        assert tuple(table.column_names) == S.VIDEOMME_COLUMNS
        rows = table.to_pylist()
        n = S.split_counts(20)[split]
        assert len(rows) == 3 * n
        assert Counter(r["video_id"] for r in rows) == {f"{i + 1:03d}": 3 for i in range(n)}
        items = _regenerate(split, n)
        for k, row in enumerate(rows):
            tl, qs = items[k // 3]
            q = qs[k % 3]
            assert row["question_id"] == f"{row['video_id']}-{k % 3 + 1}"
            assert re.fullmatch(r"syn(tr|va|te)\d{5}", row["videoID"])
            assert (root / "data" / f"{row['videoID']}.mp4").is_file()
            assert row["duration"] == ("short" if tl.n_frames < 16 else "medium" if tl.n_frames < 24 else "long")
            assert row["task_type"] == q.family and row["question"] == q.text
            assert tuple(row["options"]) == q.options and row["answer"] == q.answer
            assert row["domain"] and row["sub_category"] and row["url"].startswith("synthetic://")
            check_question(q, video_truth(tl, q))
        all_ids |= {r["videoID"] for r in rows}
    assert len(all_ids) == 20  # unique across splits


def test_video_decode_round_trip(written):
    import av

    root = written / "video" / "train"
    for (tl, _), k in zip(_regenerate("train", 4), range(4)):
        with av.open(str(root / "data" / f"syntr{k:05d}.mp4")) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 2
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        rendered = S.render_timeline(tl, 64).permute(0, 2, 3, 1).numpy()
        assert decoded.shape == rendered.shape and len(decoded) == tl.n_frames
        assert np.abs(decoded.astype(int) - rendered.astype(int)).max() <= 2
        assert np.array_equal(S.classify_colours(decoded), S.classify_colours(rendered))


_CUE = re.compile(
    r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n"
    r'<font color="white" size="\.72c">([^<\n]+)</font>'
)


def _ms(h, m, s, ms) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def test_srt_well_formed(written):
    root = written / "video" / "train"
    checked = 0
    for k, (tl, _) in enumerate(_regenerate("train", S.split_counts(20)["train"])):
        path = root / "subtitle" / f"syntr{k:05d}.srt"
        events = S.timeline_events(tl)
        assert path.is_file() == bool(events)
        if not events:
            continue
        blocks = path.read_text(encoding="utf-8").rstrip("\n").split("\n\n")
        cue_frames = sorted({e.frame for e in events})
        assert len(blocks) == len(cue_frames)
        prev_end = 0
        for i, (block, frame) in enumerate(zip(blocks, cue_frames)):
            m = _CUE.fullmatch(block)
            assert m, block
            start, end = _ms(*m.group(2, 3, 4, 5)), _ms(*m.group(6, 7, 8, 9))
            assert int(m.group(1)) == i + 1 and prev_end <= start < end <= tl.n_frames * 500
            assert start == frame * 500  # fps 2
            assert all(e.phrase[1:] in m.group(10) for e in events if e.frame == frame)
            prev_end = end
        checked += 1
    assert checked


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "gemma3"])
def test_the_vocabulary_read_from_the_question_code_is_the_shipped_fixtures(name):
    """fixtures.vocabulary reads the words out of the synthetic package's source: wherever its question families,
    prompts and event phrases live, the tokenizer built from it is, token for token, the one the shipped model
    was trained with."""
    from vlmzip.eval import bundled, fixtures

    shipped = json.loads((bundled.model_path(name) / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert fixtures.build_tokenizer(name).get_vocab() == shipped
