"""The evaluation loop on a synthetic Video-MME-layout set, with stand-in predictors: files, resume, arithmetic."""

from __future__ import annotations

import json
import shutil

import pytest

from vlmzip.errors import InputError
from vlmzip.eval import runner, videomme
from vlmzip.eval.runner import Prediction
from vlmzip.eval.synthetic import write_video_set
from vlmzip.eval.video import Sampling


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    write_video_set(root, n_videos=4, split="test", seed=3, subtitles=False)
    return root


def samples(root, sampling=None):
    data = videomme.load(root)
    return list(videomme.iter_samples(data, sampling=sampling or Sampling(frames=4)))


class Scripted:
    """Right on every question for `none`; right on the first half of the questions otherwise, 'Z' after."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = [], fail_after

    def predict(self, policy, batch):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed
        self.calls.append((policy, [s.question.question_id for s in batch]))
        return [self.answer(policy, s) for s in batch]

    @staticmethod
    def answer(policy, sample):
        number = int(sample.question.question_id.split("-")[-1])
        right = policy == "none" or number == 1
        kept = 4 if policy == "none" else 1
        return Prediction(f"The best answer is {sample.question.answer if right else 'Z'}", 4, kept, 10.0, 12.0, 0.5)


def test_every_policy_sees_every_sample_and_results_add_up(copy, tmp_path):
    out = tmp_path / "run"
    results = runner.run(samples(copy), Scripted(), ["none", "uniform:keep=0.25"], out, {"bench": "videomme"}, 2)
    rows = runner.read_samples(out)
    assert len(rows) == 2 * 12 and {r["policy"] for r in rows} == {"none", "uniform:keep=0.25"}
    none, pruned = results["policies"]["none"], results["policies"]["uniform:keep=0.25"]
    assert none["accuracy"] == 1.0 and none["retained"] == 1.0
    assert pruned["accuracy"] == pytest.approx(4 / 12) and pruned["retained"] == pytest.approx(4 / 12)
    assert pruned["unparsed"] == 8  # 'Z' is no answer letter
    assert pruned["visual_tokens_kept"] == 1 and none["visual_tokens_kept"] == 4
    assert json.loads((out / "results.json").read_text()) == results
    assert "| uniform:keep=0.25 | 33.3% |" in runner.table(results)
    first = rows[0]
    assert first["frame_indices"] and first["response"].startswith("The best answer is")


def test_resume_after_a_kill_loses_and_repeats_nothing(copy, tmp_path):
    out, policies = tmp_path / "run", ["none", "fastv:layer=2,keep=0.5"]
    with pytest.raises(KeyboardInterrupt):
        runner.run(samples(copy), Scripted(fail_after=3), policies, out, {"bench": "videomme"}, 2)
    written = runner.read_samples(out)
    assert len(written) == 3 * 2  # three batches of two were answered before the kill
    with (out / "samples.jsonl").open("a") as log:
        log.write('{"policy": "none", "question_id": "tor')  # a line torn by the kill
    with pytest.raises(InputError, match="already holds results"):
        runner.run(samples(copy), Scripted(), policies, out, {"bench": "videomme"}, 2)
    resumed = Scripted()
    runner.run(samples(copy), resumed, policies, out, {"bench": "videomme"}, 2, resume=True)
    rows = runner.read_samples(out)
    keys = [(r["policy"], r["question_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 12
    assert sum(len(ids) for _, ids in resumed.calls) == 2 * 12 - 6  # only what was missing was asked
    with pytest.raises(InputError, match="different bench"):
        runner.run(samples(copy), Scripted(), policies, out, {"bench": "mcq"}, 2, resume=True)


def test_a_missing_video_is_an_error_for_its_questions_and_the_run_goes_on(copy, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(copy, partial)
    victim = sorted((partial / "data").iterdir())[0]
    victim.unlink()
    out = tmp_path / "run"
    predictor = Scripted()
    results = runner.run(samples(partial), predictor, ["none"], out, {}, 4)
    none = results["policies"]["none"]
    assert none["total"] == 12 and none["evaluated"] == 9 and none["accuracy"] == 1.0
    errors = [r for r in runner.read_samples(out) if r["error"]]
    assert len(errors) == 3 and all(victim.stem in r["error"] for r in errors)
    asked = {question_id for _, batch in predictor.calls for question_id in batch}
    assert len(asked) == 9 and asked.isdisjoint(r["question_id"] for r in errors)  # never sent to the model


def test_bad_arguments(copy, tmp_path):
    with pytest.raises(InputError, match="each policy once"):
        runner.run(samples(copy), Scripted(), ["none", "none"], tmp_path / "a", {})
    with pytest.raises(InputError, match="batch size must be at least 1"):
        runner.run(samples(copy), Scripted(), ["none"], tmp_path / "b", {}, 0)


def test_a_run_from_before_an_option_existed_resumes(copy, tmp_path):
    out = tmp_path / "run"
    runner.run(samples(copy)[:2], Scripted(), ["none"], out, {"bench": "videomme"}, 2)
    newer = {"bench": "videomme", "data": "None"}  # an option added since, at its default
    runner.run(samples(copy), Scripted(), ["none"], out, newer, 2, resume=True)
    assert len(runner.read_samples(out)) == 12
    with pytest.raises(InputError, match="different data"):
        runner.run(samples(copy), Scripted(), ["none"], out, {"bench": "videomme", "data": "x.jsonl"}, 2, resume=True)
