"""The bench registry behind `vlmzip eval`: a bench defined here, outside the package, registers and runs through
the command line and the runner (a stand-in predictor answers); `--bench`'s choices, options and errors come from
the registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from vlmzip.cli import main
from vlmzip.errors import InputError
from vlmzip.eval import benches, predictor, runner
from vlmzip.eval.benches import Bench, Loaded, Option, register_bench
from vlmzip.eval.benches import base as registry
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.questions import Question
from vlmzip.eval.runner import Prediction
from vlmzip.eval.samples import Sample
from vlmzip.eval.video import Sampling


class Toy(Bench):
    """Questions named one a line in a text file, each about one blank picture; the answer is always B."""

    name = "toy"
    title = "toy"
    description = "a file of toy question names"
    data = Option.of("--toy-file", type=Path, help="one question name a line")
    data_metavar = "FILE"
    options = (Option.of("--toy-side", type=int, default=8, help="picture side in pixels"),)

    def load(self, args: argparse.Namespace, data: Path, sampling: Sampling, rank: int = 0, world: int = 1) -> Loaded:
        names = data.read_text().split()
        questions = [
            Question(name, "", name, "", "", "", "", f"Is {name} B?", ("A. a", "B. b", "C. c", "D. d"), "B", "toy")
            for name in names[: args.limit]
        ]
        picture = np.zeros((args.toy_side, args.toy_side, 3), dtype=np.uint8)
        samples = (
            Sample(q, build_prompt(q, medium="image"), args.template, "image", [picture], medium="image")
            for q in questions
        )
        return Loaded(samples, {"layout": "toy", "questions": len(questions)}, len(names))


class StandIn:
    """Answers B under `none`, A under every other policy, and remembers the pictures' sides."""

    def __init__(self):
        self.sides = []

    def predict(self, policy, samples):
        self.sides += [s.frames[0].shape[0] for s in samples]
        return [Prediction("B" if policy == "none" else "A", 16, 16 if policy == "none" else 4) for _ in samples]


@pytest.fixture
def toy(monkeypatch):
    """Toy registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(registry, "_BENCHES", dict(registry._BENCHES))
    register_bench(Toy)
    return Toy


@pytest.fixture
def stand_in(monkeypatch):
    """`vlmzip eval` answers with a StandIn instead of loading the model it is given."""
    answering = StandIn()
    monkeypatch.setattr(predictor, "load", lambda path, dtype, device: (None, None))
    monkeypatch.setattr(predictor, "ModelPredictor", lambda model, processor, max_new_tokens: answering)
    return answering


def test_a_bench_defined_outside_the_package_runs_through_vlmzip_eval(toy, stand_in, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("q1\nq2\nq3\n")
    out = tmp_path / "run"
    args = ["--toy-file", str(names), "--toy-side", "5", "--limit", "2", "--model", str(tmp_path), "--out", str(out)]
    assert main(["eval", *args, "--policy", "uniform:keep=0.25"]) == 0  # the bench follows from its data option
    rows = runner.read_samples(out)
    assert [(r["policy"], r["question_id"], r["correct"]) for r in rows] == [
        ("none", "q1", True),
        ("uniform:keep=0.25", "q1", False),
        ("none", "q2", True),
        ("uniform:keep=0.25", "q2", False),
    ]
    assert stand_in.sides == [5] * 4
    config = json.loads((out / "config.json").read_text())
    assert config["bench"] == "toy" and config["toy_file"] == str(names) and config["toy_side"] == "5"
    assert config["layout"] == "toy" and config["questions"] == 2
    results = json.loads((out / "results.json").read_text())["policies"]
    assert results["none"]["accuracy"] == 1.0 and results["uniform:keep=0.25"]["retained"] == 0.0
    printed = capsys.readouterr().out
    assert "2 of 3 questions x 2 policies" in printed and "| category | none | uniform:keep=0.25 |" in printed


def test_choices_options_and_messages_come_from_the_registry(toy, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no help line wrapped inside a flag
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--bench {videomme,mcq,images,videos,captions,toy}" in shown
    assert "toy (a file of toy question names, --toy-file)" in shown
    assert "--bench toy: --toy-file TOY_FILE one question name a line --toy-side TOY_SIDE" in shown
    with pytest.raises(SystemExit):  # argparse refuses a name that is not registered, listing the registered ones
        main(["eval", "--bench", "tyo"])
    err = capsys.readouterr().err.replace("'", "")  # Python 3.12 stopped quoting the choices
    assert "invalid choice: tyo (choose from videomme, mcq, images, videos, captions, toy)" in err
    cases = [
        (
            ["--model", "llava"],
            "--model needs questions: --data-root DIR (Video-MME), --data FILE.jsonl (multiple "
            "choice), --toy-file FILE (toy), or a bundled set: --bench images or --bench videos, or generated "
            "scenes: --bench captions",
        ),
        (["--bench", "toy", "--model", "llava"], "--bench toy needs --toy-file FILE (a file of toy question names)"),
        (["--toy-file", "a", "--data", "b"], "give --data (a multiple-choice JSONL file) or --toy-file (a file"),
        (
            ["--bench", "mcq", "--data", "a", "--model", "llava", "--toy-side", "3"],
            "--toy-side is a toy option; --bench mcq has no such",
        ),
        (["--bench", "images", "--toy-file", "a"], "drop --data-root/--data/--toy-file, or use --bench videomme"),
    ]
    for args, message in cases:
        assert main(["eval", *args]) == 2
        assert message in capsys.readouterr().err, args


def test_the_built_in_benches_and_lookup_errors():
    assert [cls.name for cls in benches.benches()] == ["videomme", "mcq", "images", "videos", "captions"]
    assert benches.bench_class("videos").bundled == "video" and benches.bench_class("mcq").data.flag == "--data"
    with pytest.raises(InputError, match=r"unknown bench 'videome'. Did you mean 'videomme'\? Known benches: videomme"):
        benches.bench_class("videome")
    with pytest.raises(ValueError, match="already registered"):
        register_bench(type("Again", (Toy,), {"name": "mcq"}))
    with pytest.raises(ValueError, match="needs a data option, a bundled set or to be generated"):
        register_bench(type("Nowhere", (Bench,), {"name": "nowhere"}))
    assert "toy" not in [cls.name for cls in benches.benches()]  # the other tests' registrations were undone
