"""``vlmzip eval --bench mcq --data FILE.jsonl``: multiple-choice questions about pictures or videos, one JSON
object a line (the format is in ``vlmzip.eval.mcq``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vlmzip.eval.benches.base import Bench, Loaded, Option, register_bench

if TYPE_CHECKING:
    from vlmzip.eval.video import Sampling


@register_bench
class MultipleChoice(Bench):
    """A JSONL multiple-choice file (``vlmzip.eval.mcq``): ``--limit`` keeps the first questions; results break
    accuracy down by each question's category."""

    name = "mcq"
    title = "multiple choice"
    description = "a multiple-choice JSONL file"
    data = Option.of("--data", type=Path, help="a multiple-choice JSONL file (see vlmzip.eval.mcq)")
    data_metavar = "FILE.jsonl"

    def load(self, args: argparse.Namespace, data: Path, sampling: Sampling, rank: int = 0, world: int = 1) -> Loaded:
        from vlmzip.eval import mcq, parallel

        dataset = mcq.load(data)
        # questions about one file stay in one process, which reads it once
        items = parallel.shard(mcq.select(dataset, args.limit), rank, world, lambda item: item.paths)
        samples = mcq.iter_samples(
            dataset, items, sampling, template=args.template, max_side=args.max_side, missing=args.missing
        )
        return Loaded(samples, {**dataset.summary(), "questions": len(items)}, len(dataset.items))
