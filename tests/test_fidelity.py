"""The fidelity sweep's machinery (``vlmzip.eval.fidelity``): fresh test questions, the intervals, what is bold,
the equivalent tokens, the plan of cells and resuming a killed sweep. Fast: no model answers a question here
except in the one end-to-end run on four bundled questions."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import vlmzip
from vlmzip.eval import bundled, fidelity, fidelity_runs, synthetic
from vlmzip.eval.fidelity_tables import Cell, section
from vlmzip.eval.intervals import paired_difference, plus_minus, wilson

# ------------------------------------------------------------------------------------------- fresh questions


def test_fresh_questions_are_a_deterministic_test_split_draw(tmp_path):
    one = fidelity.fresh_questions(tmp_path / "a", seed=7, images=24, video_questions=3)
    again = fidelity.fresh_questions(tmp_path / "b", seed=7, images=24)
    other = fidelity.fresh_questions(tmp_path / "c", seed=8, images=24)
    text = (one.root("image") / "test.jsonl").read_text()
    assert text == (again.root("image") / "test.jsonl").read_text()  # a pure function of the seed
    assert text != (other.root("image") / "test.jsonl").read_text()
    records = synthetic.load_image_set(one.root("image"), "test")
    assert all(synthetic.content_split(r.scene) == "test" for r in records)  # never a training scene
    shipped = {repr(r.scene) for r in synthetic.load_image_set(bundled.dataset_path("image"), "test")}
    assert not shipped & {repr(r.scene) for r in records}  # and not the bundled draw
    d = bundled.IMAGE_DIFFICULTY  # the bundled questions' distribution
    assert all(d.min_objects <= len(r.scene.objects) <= d.max_objects for r in records)
    assert (one.image_source, one.video_source, again.video_source) == ("seed=7", "seed=7", "bundled")
    assert len(fidelity.video_samples(root=one.root("video"))) == 3  # one clip, three questions
    with pytest.raises(vlmzip.VlmzipError, match="draws the bundled test questions"):
        fidelity.fresh_questions(tmp_path / "d", seed=bundled.SEED, images=4)


# ------------------------------------------------------------------------------------------------ intervals


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II, score method
    published = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }
    for (k, n), interval in published.items():
        assert wilson(k, n) == pytest.approx(interval, abs=5e-5)
    assert plus_minus(99, 100) == pytest.approx(0.99 - wilson(99, 100)[0])  # the larger, lower side near 100%


def test_paired_difference_matches_newcombe_method_10():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8:
    # 59 both, 6 only before, 16 only after, 80 neither: -0.0621 (-0.1186 to -0.0046)
    a = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    b = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    got = paired_difference(a, b)
    assert (got.estimate, got.low, got.high) == pytest.approx((-0.0621, -0.1186, -0.0046), abs=5e-5)
    same = paired_difference(a, a)
    assert same.estimate == 0 and same.low < 0 < same.high and not same.above_zero


# -------------------------------------------------------------------------------------------- the tables


def _cell(label: str, correct: str, method: str = "", stage: str = "", seen: float | None = None, **kw) -> Cell:
    n = len(correct)
    return Cell(
        model="gemma3",
        medium="image",
        source="seed=1",
        label=label,
        method=method,
        stage=stage,
        keep=label.split("@")[1] if "@" in label else "1",
        policy=label,
        correct=correct,
        visual_in=256 * n,
        visual_seen=256 * n if seen is None else seen,
        seconds=1.0,
        device="cpu",
        **kw,
    )


def test_bold_needs_the_paired_interval_above_zero():
    """A method 6 points above random is bold when it wins 6 questions more and loses none, not when it wins 14
    and loses 8 (the same accuracies, but a difference that chance explains)."""
    base = "1" * 50 + "0" * 50
    clean = "1" * 56 + "0" * 44  # wins 6, loses none
    noisy = "1" * 42 + "0" * 8 + "1" * 14 + "0" * 36  # loses 8, wins 14
    cells = [_cell("none", "1" * 100), _cell("blank", "0" * 100), _cell("random@0.5", base, "random", "vision")]
    cells += [_cell("random@0.25", base, "random", "vision")]
    cells += [_cell("fastv@0.5", clean, "fastv", "prefill", seen=0.75 * 256 * 100)]
    cells += [_cell("fastv@0.25", noisy, "fastv", "prefill", seen=0.625 * 256 * 100)]
    cells += [_cell("knorm@0.5", "1" * 100, "knorm", "decode")]  # the uncompressed answers: nothing was pruned
    text = section(cells, "cmd")
    assert "| **56.0 ±9.8** (eq 75%) | 56.0 ±9.8 (eq 62%) | – | – |" in text
    assert "| knorm | decode | 100.0 ±3.7 | 100.0 ±3.7 | – |" in text


def test_tables_record_the_bundled_questions_for_the_test_suite(tmp_path):
    fresh = [_cell("none", "1" * 9 + "0"), _cell("random@0.1", "1" * 5 + "0" * 5, "random", "vision")]
    checks = [
        replace(_cell("none", "1" * 3 + "0"), source="bundled", check=True),
        replace(_cell("fastv@0.1", "1" * 2 + "0" * 2, "fastv", "prefill"), source="bundled", check=True),
    ]
    checks[1] = replace(checks[1], policy="fastv:layer=2,keep=0.1")
    path = tmp_path / "fidelity.md"
    fidelity.write(path, fresh + checks, "cmd")
    text = path.read_text()
    assert "(10 fresh, seed 1," in text
    assert "Bundled questions (4, CPU): none 75.0%, fastv:layer=2,keep=0.1 50.0%;" in text
    assert fidelity.bundled_record(text, "gemma3") == {"none": "75.0%", "fastv:layer=2,keep=0.1": "50.0%"}


# ----------------------------------------------------------------------------------------------- the plan


def _info(name: str, stage: str, **params) -> vlmzip.MethodInfo:
    return vlmzip.MethodInfo(name, stage, "", params)


def test_a_variant_fixes_parameters_and_is_swept_over_keep():
    (variant,) = fidelity._methods(["vtc-cls:at_layer=2,layers=2"])
    assert variant.name == "vtc-cls:at_layer=2,layers=2" and variant.stage == "vision"
    assert fidelity.policy(variant, 0.25) == "vtc-cls:at_layer=2,layers=2,keep=0.25"
    (fixed_layer,) = fidelity._methods(["fastv:layer=3"])
    assert fidelity.policy(fixed_layer, 0.1) == "fastv:layer=3,keep=0.1"
    with pytest.raises(vlmzip.PolicyError, match="unknown parameter 'depth'"):
        fidelity._methods(["vtc-cls:depth=2"])
    with pytest.raises(vlmzip.VlmzipError, match="unknown method"):
        fidelity._methods(["nope:keep=2"])


def test_policy_is_generic_over_parameters():
    assert fidelity.policy(_info("fastv", "prefill", layer=2, keep=0.5), 0.1) == "fastv:layer=2,keep=0.1"
    assert fidelity.policy(_info("sched", "prefill", layers=(8, 16), keep=64), 0.25) == "sched:keep=0.25"
    assert fidelity.policy(_info("thresh", "prefill", tau=0.97), 0.25) is None


def test_plan_measures_random_and_adds_the_cpu_checks_where_needed():
    methods = [_info("sched", "prefill", layers=(1, 2), keep=64), _info("thresh", "prefill", tau=0.97)]
    methods += [_info("capped", "prefill", layer=2, keep=1.0, tau=0.9)]  # a threshold, keep only caps it
    fresh = fidelity.Questions(image_root="/x", image_source="seed=3")
    jobs = fidelity.plan(["llava", "qwen2_5_vl"], methods, fresh, "cuda")
    labels = [(j.model, j.medium, j.label) for j in jobs if not j.check]
    assert labels[0][1] == "video" and ("qwen2_5_vl", "video", "random@0.05") in labels  # slowest first
    assert ("llava", "video", "none") not in labels  # LLaVA reads no clips
    assert ("llava", "image", "sched@0.1") in labels and ("llava", "image", "sched@default") not in labels
    assert ("llava", "image", "thresh@default") in labels and ("llava", "image", "thresh@0.1") not in labels
    assert ("llava", "image", "capped@0.1") in labels and ("llava", "image", "capped@default") in labels
    assert {j.device for j in jobs if not j.check} == {"cuda"}
    checks = [(j.model, j.label, j.device, j.source) for j in jobs if j.check]
    assert checks == [(m, lab, "cpu", "bundled") for m in ("llava", "qwen2_5_vl") for lab in ("none", "fastv@0.1")]
    bundled_cpu = fidelity.plan(["llava"], vlmzip.methods(), fidelity.Questions(), "cpu", media=["image"])
    assert not any(j.check for j in bundled_cpu)  # the table's own cells are the checks


# ---------------------------------------------------------------------------------------------- resuming


def _job(label: str) -> fidelity.Job:
    return fidelity.Job("llava", "image", "seed=1", label, "", "", "1", "none", "cpu")


def _fake(job: fidelity.Job) -> Cell:
    if job.label == "killed":
        raise KeyboardInterrupt  # the sweep is stopped here
    if job.label == "broken":
        raise RuntimeError("a method's bug")
    return _cell(job.label, "10")


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    path, header = tmp_path / "r.jsonl", {"questions": 10, "seed": 1}
    assert fidelity_runs.open_results(path, header, resume=False) == []
    with pytest.raises(KeyboardInterrupt):
        fidelity_runs.run([_job("a"), _job("killed"), _job("c")], _fake, path)
    with path.open("a") as file:
        file.write('{"model": "llava", "cor')  # the line being written at the kill
    with pytest.raises(vlmzip.VlmzipError, match="--resume"):
        fidelity_runs.open_results(path, header, resume=False)
    with pytest.raises(vlmzip.VlmzipError, match="other questions"):
        fidelity_runs.open_results(path, {**header, "seed": 2}, resume=True)
    done = {cell.label for cell in fidelity_runs.open_results(path, header, resume=True)}
    assert done == {"a"}
    pending = [job for job in (_job("a"), _job("b"), _job("broken"), _job("c")) if job.label not in done]
    failed = fidelity_runs.run(pending, _fake, path)
    assert [(job.label, error) for job, error in failed] == [("broken", "RuntimeError: a method's bug")]
    header_read, cells = fidelity_runs.read_results(path)
    assert header_read == header and [c.label for c in cells] == ["a", "b", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())  # the cut line is gone


def test_sweep_command_writes_tables_and_resumes(tmp_path, capsys):
    """End to end on the first 4 bundled questions: FastV and random on LLaVA, then a resume with nothing
    left to measure that writes the same tables."""
    results, out = tmp_path / "r.jsonl", tmp_path / "fidelity.md"
    args = ["--models", "llava", "--methods", "fastv", "--media", "image", "--limit", "4", "--results", str(results)]
    assert fidelity.main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "### llava — image questions (4 bundled," in text and "| fastv | prefill |" in text
    assert "(eq 75%)" in text  # layer 2 of 4 keeps half: (1 + 1 + 0.5 + 0.5) / 4
    assert fidelity.main([*args, "--out", str(out)]) == 2  # the results file holds a sweep already
    assert fidelity.main([*args, "--resume", "--out", str(tmp_path / "again.md")]) == 0
    assert "0 cells to measure (10 already" in capsys.readouterr().err
    assert (tmp_path / "again.md").read_text() == text
