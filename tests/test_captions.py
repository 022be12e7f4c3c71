"""The caption scorer (`vlmzip.eval.captions`): descriptions parsed into facts and matched against a scene's, on
hand-written descriptions; and the normal interval of a mean F1."""

from __future__ import annotations

import math

import pytest

from vlmzip.eval import bundled, synthetic
from vlmzip.eval.captions import (
    Description,
    EventFact,
    ObjectFact,
    details_table,
    parse,
    scene_facts,
    score,
    summarize,
    timeline_facts,
)
from vlmzip.eval.intervals import mean_interval
from vlmzip.eval.synthetic import Obj, Scene

# Three objects in cells (0, 0), (1, 1) and (2, 2) of the 3x3 board (24 position units a cell).
SCENE = Scene(
    (
        Obj("circle", "red", "small", 12, 12),
        Obj("square", "blue", "large", 36, 36),
        Obj("ring", "green", "small", 60, 60),
    )
)
REFERENCE = scene_facts(SCENE)
RED, BLUE, GREEN = "small red circle top left", "large blue square center", "small green ring bottom right"


def scored(text: str, reference: Description = REFERENCE):
    return score(parse(text), reference)


def test_the_reference_caption_parses_back_into_the_scene_facts():
    assert synthetic.caption(SCENE)[1] == f"{RED}, {BLUE}, {GREEN}."
    assert REFERENCE.objects[0] == ObjectFact("small", "red", "circle", "top left")
    for difficulty, seed in ((bundled.IMAGE_DIFFICULTY, 0), (synthetic.IMAGE_CURRICULUM[-1], 1)):
        rng = synthetic.split_rng(seed, "image", "test")
        for _ in range(200):
            scene = synthetic.sample_scene(rng, difficulty)
            assert parse(synthetic.caption(scene)[1]) == scene_facts(scene)
    rng = synthetic.split_rng(0, "video", "test")
    for _ in range(100):
        clip = synthetic.sample_timeline(rng, bundled.VIDEO_DIFFICULTY)
        facts = timeline_facts(clip)
        assert parse(synthetic.video_caption(clip)[1]) == facts
        assert score(facts, facts).f1 == 1.0


def test_a_perfect_description_in_the_models_spacing():
    result = scored(f"{RED} , {BLUE} , {GREEN} .")  # the word-level tokenizer decodes with spaces around marks
    assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)
    assert result.facts == (3, 3, 3) and result.attributes == dict.fromkeys(("size", "colour", "shape", "position"), 3)


def test_a_missing_object_costs_recall_only():
    result = scored(f"{RED}, {GREEN}.")
    assert result.precision == 1.0 and result.recall == pytest.approx(2 / 3) and result.f1 == pytest.approx(0.8)
    assert result.attributes == dict.fromkeys(("size", "colour", "shape", "position"), 2)


def test_an_extra_object_costs_precision_only():
    result = scored(f"{RED}, {BLUE}, {GREEN}, large white cross top right.")
    assert result.precision == pytest.approx(3 / 4) and result.recall == 1.0
    assert result.attributes["colour"] == 3  # the extra object is aligned with no reference object


def test_a_wrong_colour_loses_the_fact_and_only_the_colour():
    result = scored(f"{RED}, large purple square center, {GREEN}.")
    assert result.facts == (3, 3, 2) and result.f1 == pytest.approx(2 / 3)
    assert result.attributes == {"size": 3, "colour": 2, "shape": 3, "position": 3}


def test_order_does_not_matter():
    assert scored(f"{GREEN}, {RED}, {BLUE}.").f1 == 1.0


def test_a_duplicated_object_matches_once_and_counts_once_against_precision():
    result = scored(f"{RED}, {RED}, {BLUE}, {GREEN}.")
    assert result.facts == (3, 4, 3) and result.precision == pytest.approx(3 / 4) and result.recall == 1.0
    assert result.attributes["shape"] == 3  # one-to-one: the copy has no partner left


def test_garbage_states_no_fact():
    described = parse("blah blah, the of . ,")
    assert described.facts == () and described.unparsed == ("blah blah", "the of")
    result = score(described, REFERENCE)
    assert (result.precision, result.recall, result.f1, result.garbage) == (0.0, 0.0, 0.0, 2)
    assert result.attributes == dict.fromkeys(("size", "colour", "shape", "position"), 0)
    assert scored("").f1 == 0.0


def test_nothing_is_right_only_about_an_empty_scene():
    empty = scene_facts(Scene(()))
    assert parse("nothing.") == Description() and score(parse("nothing ."), empty).f1 == 1.0
    assert scored("nothing.").f1 == 0.0 and scored("nothing.").garbage == 0


def test_attributes_must_match_exactly():
    # "top" is not a cell name; a clause keeps the first word of each kind and stays one claim
    (half,) = parse("small red circle top").objects
    assert half == ObjectFact("small", "red", "circle", None)
    result = scored(f"small red circle top, small red blue circle top left right, {BLUE}, {GREEN}.")
    assert result.facts == (3, 4, 3) and result.attributes["position"] == 3


def test_per_attribute_accuracy_follows_the_best_alignment():
    # the colours are swapped between the first two objects: every fact wrong, every other attribute right
    result = scored("small blue circle top left, large red square center, small green ring bottom right.")
    assert result.facts == (3, 3, 1)
    assert result.attributes == {"size": 3, "colour": 1, "shape": 3, "position": 3}


def test_events_are_facts_of_a_clip():
    reference = Description(
        REFERENCE.objects[:1], (EventFact("move", "circle", "right"), EventFact("appear", "ring", ""))
    )
    result = score(parse(f"{RED}. Then the circle moved left. Then the ring appeared. Then the ."), reference)
    assert result.objects == (1, 1, 1) and result.events == (2, 2, 1) and result.garbage == 1  # "Then the."
    assert parse("Then the circle moved left.").events == (EventFact("move", "circle", "left"),)
    assert parse("Then the square turned.").events == (EventFact("recolour", "square", None),)


def test_other_grids_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="3x3 scenes only; this scene has a 4x4 grid"):
        scene_facts(Scene((Obj("circle", "red", "small", 12, 12),), grid=4))


def _row(text: str, medium: str = "image", error: str | None = None) -> dict:
    fields = {} if error else scored(text).to_dict()
    return {"medium": medium, "error": error, **fields}


def test_summaries_pool_and_average_and_leave_out_errors():
    rows = [_row(f"{RED}, {BLUE}, {GREEN}."), _row(f"{RED}."), _row("blah"), _row("", error="no response")]
    overall = summarize(rows)["overall"]
    assert (overall["total"], overall["errors"], overall["evaluated"], overall["unparsed"]) == (4, 1, 3, 1)
    assert overall["f1"] == pytest.approx((1 + 0.5 + 0) / 3)  # one of three objects, all right: F1 0.5
    assert overall["micro"] == pytest.approx({"precision": 1.0, "recall": 4 / 9, "f1": 8 / 13})
    assert overall["attributes"]["colour"] == pytest.approx(4 / 9) and overall["events"] is None
    assert overall["ci95"] == pytest.approx(list(mean_interval([1.0, 0.5, 0.0], bounds=(0, 1))))
    assert list(summarize(rows)["by_medium"]) == ["image"]
    results = {"policies": {"none": {"summary": summarize(rows)}}}
    assert "| none | image | 50.0% | 61.5% | 44.4% | 44.4% | 44.4% | 44.4% | - | 1 | 3 |" in details_table(results)


def test_mean_interval():
    low, high = mean_interval([0.0, 1.0, 0.5, 0.5])
    half = 1.959963984540054 * math.sqrt(1 / 6) / 2  # sample SD sqrt(1/6), n = 4
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half))
    assert mean_interval([0.9, 1.0, 1.0], bounds=(0.0, 1.0))[1] == 1.0
    with pytest.raises(ValueError, match="at least two values, got 1"):
        mean_interval([1.0])
