"""Data-parallel eval: sharding by video and rank 0's merge give the single-process results."""

from __future__ import annotations

import json

import pytest
from test_runner import Scripted

from vlmzip.eval import parallel, runner, videomme
from vlmzip.eval.synthetic import write_video_set
from vlmzip.eval.video import Sampling


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    write_video_set(root, n_videos=5, split="test", seed=4, subtitles=False)
    return videomme.load(root)


def test_shards_cover_every_question_once_and_keep_videos_whole(data):
    shards = [parallel.shard(data.questions, rank, 3) for rank in range(3)]
    ids = [q.question_id for s in shards for q in s]
    assert sorted(ids) == sorted(q.question_id for q in data.questions)
    videos = [{q.video_file_stem for q in s} for s in shards]
    assert all(not (a & b) for i, a in enumerate(videos) for b in videos[i + 1 :])
    assert [len(v) for v in videos] == [2, 2, 1]
    with pytest.raises(ValueError, match="rank 3 is not in a world of 3"):
        parallel.shard(data.questions, 3, 3)


def test_merged_ranks_give_the_single_process_results(data, tmp_path):
    policies, sampling = ["none", "uniform:keep=0.25"], Sampling(frames=4)
    single = runner.run(
        videomme.iter_samples(data, sampling=sampling), Scripted(), policies, tmp_path / "one", {"bench": "x"}, 2
    )
    out = tmp_path / "many"
    for rank in range(2):
        questions = parallel.shard(data.questions, rank, 2)
        samples = videomme.iter_samples(data, questions, sampling)
        config = {"bench": "x", "questions": len(questions)}
        runner.run(samples, Scripted(), policies, parallel.rank_dir(out, rank), config, 2)
    parallel.merge(out, 2, runner.SAMPLES, runner.CONFIG)
    config = json.loads((out / runner.CONFIG).read_text())
    assert config["processes"] == 2 and config["questions"] == len(data.questions)
    merged = runner.write_results(out, policies)
    assert merged == single
    assert len(runner.read_samples(out)) == 2 * len(data.questions)


def test_merge_names_the_missing_rank(tmp_path):
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / runner.SAMPLES).write_text("")
    with pytest.raises(FileNotFoundError, match="rank1"):
        parallel.merge(tmp_path, 2, runner.SAMPLES, runner.CONFIG)
