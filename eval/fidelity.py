"""Accuracy against visual tokens kept, for every method, on the shipped fixtures: ``docs/fidelity.md``.

``python -m vlmzip.eval.fidelity`` answers test questions through ``vlmzip eval``'s predictor and scoring
(official multiple-choice prompt, greedy, one token) with each model uncompressed, with the image blanked, and
under every registered method at 50, 25, 10 and 5% of visual tokens kept; random pruning is in every table as
the baseline a method must beat. The Qwen2.5-VL fixture is also measured on video questions.

The questions are the bundled test sets by default; ``--questions N --seed S`` (and ``--video-questions N``)
draw fresh test-split questions instead, as the bundled ones were drawn (same generator, distributions and
split; another seed): as many as a narrow interval needs. Every cell is appended to ``--results`` (JSON lines)
when it is done; ``--resume`` continues a killed sweep, ``--workers N`` measures cells in N processes,
``--methods`` measures a subset (the cells of others already in the results file keep their rows), ``--models``
re-measures those models' tables and keeps the others in ``--out`` as they were.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import vlmzip
from vlmzip.eval import bundled, mcq, synthetic, videomme
from vlmzip.eval.families import fixture_family
from vlmzip.eval.fidelity_runs import Progress, open_results, read_results, run
from vlmzip.eval.fidelity_tables import (
    BEGIN,
    CHECKED,
    DEFAULT,
    END,
    KEEPS,
    Cell,
    bundled_record,
    label,
    section,
    sections,
    summary,
    write,
)
from vlmzip.eval.predictor import ModelPredictor, load
from vlmzip.eval.samples import Sample
from vlmzip.eval.scoring import score
from vlmzip.eval.video import Sampling

__all__ = [
    "BEGIN",
    "END",
    "KEEPS",
    "Job",
    "Questions",
    "accuracy",
    "answers",
    "blanked",
    "bundled_record",
    "fresh_questions",
    "image_samples",
    "main",
    "measure",
    "own_budget",
    "plan",
    "policy",
    "section",
    "sections",
    "video_samples",
    "write",
]

PREFILL_LAYER = 2  # a method that takes one ``layer`` acts at this one (of 4 in the fixtures)


def policy(method: vlmzip.MethodInfo, keep: float) -> str | None:
    """The policy that keeps ``keep`` of the visual tokens with ``method``: at layer ``PREFILL_LAYER`` when the
    method acts at one layer; a method with a schedule (``layers``) scales it to the model itself and gets only
    the budget. ``None`` for a method without a ``keep`` budget."""
    if "keep" not in method.params:
        return None
    name, _, fixed = method.name.partition(":")  # a variant (``vtc-cls:at_layer=2``) keeps its parameters
    layer = f"layer={PREFILL_LAYER}" if "layer" in method.params and "layer=" not in fixed else ""
    return f"{name}:" + ",".join(part for part in (fixed, layer, f"keep={keep:g}") if part)


def own_budget(method: vlmzip.MethodInfo) -> bool:
    """Whether ``method`` sets its budget itself by default (a threshold): it has no ``keep``, or one that keeps
    everything unless given (a cap). It is then also measured at its defaults, beside its ``keep`` sweep."""
    return method.params.get("keep", 1.0) == 1.0


# ----------------------------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Questions:
    """Where a sweep's questions are: the test sets' directories (``None``: the bundled ones), what they are
    ("bundled" or "seed=S") and how many of each to answer (``limit``: the first N)."""

    image_root: str | None = None
    video_root: str | None = None
    image_source: str = "bundled"
    video_source: str = "bundled"
    limit: int | None = None

    def root(self, medium: str) -> Path:
        given = self.image_root if medium == "image" else self.video_root
        return Path(given) if given else bundled.dataset_path(medium)

    def source(self, medium: str) -> str:
        return self.image_source if medium == "image" else self.video_source


def fresh_questions(root: Path, seed: int, images: int | None = None, video_questions: int | None = None) -> Questions:
    """Write ``images`` image questions and enough clips for ``video_questions`` (3 a clip) of the test split
    under ``root``, drawn exactly as the bundled test sets (``bundled.write_image_questions`` /
    ``write_video_questions``) with ``seed``. Training never sees them: the splits are kept apart by content
    (``synthetic.content_split``: a test scene is never a training scene, whatever the seeds), and the test
    split's random stream is its own (``synthetic.split_rng``). Seed ``bundled.SEED`` would draw the bundled
    questions again, so it is refused."""
    if seed == bundled.SEED:
        raise vlmzip.VlmzipError(f"seed {seed} draws the bundled test questions; pick another seed for fresh ones")
    questions = Questions()
    if images:
        bundled.write_image_questions(root / "image", images, seed)
        questions = replace(questions, image_root=str(root / "image"), image_source=f"seed={seed}")
    if video_questions:
        bundled.write_video_questions(root / "video", math.ceil(video_questions / 3), seed)
        questions = replace(questions, video_root=str(root / "video"), video_source=f"seed={seed}")
    return questions


def image_samples(limit: int | None = None, root: Path | None = None) -> list[Sample]:
    """The image questions under ``root`` (default: the bundled ones; the first ``limit``), as ``vlmzip eval
    --bench images`` reads them."""
    data = mcq.load(root or bundled.dataset_path("image"))
    return list(mcq.iter_samples(data, mcq.select(data, limit), missing="fail"))


def video_samples(limit: int | None = None, root: Path | None = None) -> list[Sample]:
    """The video questions under ``root`` (default: the bundled ones) with every frame, as ``vlmzip eval --bench
    videos`` reads them."""
    data = videomme.load(root or bundled.dataset_path("video"))
    every_frame = Sampling(fps=bundled.VIDEO_FPS, max_frames=64)
    return list(videomme.iter_samples(data, videomme.select(data, limit=limit), every_frame, missing="fail"))


def blanked(samples: Sequence[Sample]) -> list[Sample]:
    """The same questions over an empty scene (background only), every frame."""
    side = samples[0].frames[0].shape[0]
    empty = synthetic.render([synthetic.Scene(())], side)[0].permute(1, 2, 0).numpy()
    return [replace(s, frames=[empty] * len(s.frames)) for s in samples]


# -------------------------------------------------------------------------------------------------- answers


def answers(
    predictor: ModelPredictor,
    policy: str,
    samples: Sequence[Sample],
    batch_size: int = 50,
    after_batch: Callable[[], None] = lambda: None,
) -> list[bool]:
    """Whether the predictor answers each of ``samples`` right under ``policy``, scored as ``vlmzip eval`` scores;
    ``after_batch`` runs after each batch (to read ``vlmzip.stats``). A batch holds samples of one frame count
    (images, or clips of one length, wherever they are in the set), at most ``batch_size``: padded to their
    longest clip, batches of 50 of the 180 video questions in file order took 109 s on 2 cores, a clip's own
    questions 45 s, one question at a time 38 s (images: 15 s one at a time, 9 s by 50). Clips of one length
    from the whole set answered the same 180 questions right as a clip's own questions did, uncompressed and
    under FastV at 10%, in 25 batches instead of 60 and 15% less time on the CPU."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].frames))  # stable: file order within a length
    right = [False] * len(samples)
    for _, group in itertools.groupby(order, key=lambda i: len(samples[i].frames)):
        group = list(group)
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            predictions = predictor.predict(policy, [samples[i] for i in chunk])
            after_batch()
            for i, prediction in zip(chunk, predictions, strict=True):
                right[i] = score(samples[i], prediction.response).correct
    return right


def accuracy(predictor: ModelPredictor, policy: str, samples: Sequence[Sample], batch_size: int = 50) -> float:
    """Fraction of ``samples`` the predictor answers right under ``policy`` (``answers``)."""
    return sum(answers(predictor, policy, samples, batch_size)) / len(samples)


def predictor(name: str, device: str = "cpu") -> ModelPredictor:
    """Bundled model ``name`` in float32 (on the CPU by default), answering with one token (the letter)."""
    model, processor = load(bundled.model_path(name), torch.float32, device)
    return ModelPredictor(model, processor, max_new_tokens=1)


# ------------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class Job:
    """One cell to measure: a model answering one medium's questions (blanked or not) under one policy."""

    model: str
    medium: str
    source: str
    label: str
    method: str
    stage: str
    keep: str
    policy: str
    device: str
    blank: bool = False
    check: bool = False

    @property
    def key(self) -> tuple[str, str, str, bool]:
        return self.model, self.medium, self.label, self.check


def reads_video(model: str) -> bool:
    """Whether the fixture takes clips (its family has a video placeholder)."""
    return bool(fixture_family(model).video_marker)


def plan(
    models: Sequence[str],
    methods: Sequence[vlmzip.MethodInfo],
    questions: Questions,
    device: str,
    media: Sequence[str] = ("image", "video"),
) -> list[Job]:
    """Every cell of the sweep, slowest first (videos, then images; the CPU checks last): uncompressed, blanked
    and each method at every keep. Random pruning is always measured, the baseline of every comparison. The
    cells the test suite re-measures against the shipped weights (``CHECKED``, on the bundled image questions
    on the CPU) are added where the tables do not hold them."""
    chosen = list(methods)
    if not any(m.name == "random" for m in chosen):
        chosen = [m for m in vlmzip.methods() if m.name == "random"] + chosen
    jobs = []
    for medium in ("video", "image"):
        for model in models:
            if medium in media and (medium == "image" or reads_video(model)):
                jobs += _table_jobs(model, medium, questions.source(medium), chosen, device)
    if "image" in media and not questions.limit:
        covered = {job.key[:3] for job in jobs if job.source == "bundled" and job.device == "cpu"}
        jobs += [job for model in models for job in _check_jobs(model) if job.key[:3] not in covered]
    return jobs


def _method_job(base: Job, method: vlmzip.MethodInfo, keep: float | str) -> Job:
    """``base`` under ``method`` at ``keep`` (``DEFAULT``: its own budget)."""
    text = method.name if keep == DEFAULT else policy(method, keep)
    budget = DEFAULT if keep == DEFAULT else f"{keep:g}"
    return replace(
        base, label=label(method.name, keep), method=method.name, stage=method.stage, keep=budget, policy=text
    )


def _table_jobs(model: str, medium: str, source: str, methods: Sequence[vlmzip.MethodInfo], device: str) -> list[Job]:
    base = Job(model, medium, source, "none", "", "", "1", "none", device)
    jobs = [base, replace(base, label="blank", blank=True)]
    for method in methods:
        if method.attention_only:
            continue  # sparse prefill attention drops no token: it has no place on the kept-fraction axis
        keeps = (KEEPS if policy(method, KEEPS[0]) else ()) + ((DEFAULT,) if own_budget(method) else ())
        jobs += [_method_job(base, method, keep) for keep in keeps]
    return jobs


def _check_jobs(model: str) -> list[Job]:
    base = Job(model, "image", "bundled", "none", "", "", "1", "none", "cpu", check=True)
    checked = [m for m in vlmzip.methods() if m.name == CHECKED[0]]
    return [base, *(_method_job(base, method, CHECKED[1]) for method in checked)]


# ---------------------------------------------------------------------------------- measuring (in a worker)


@functools.cache
def _predictor(name: str, device: str) -> ModelPredictor:
    return predictor(name, device)


@functools.cache
def _samples(medium: str, root: Path, limit: int | None, blank: bool) -> list[Sample]:
    if blank:
        return blanked(_samples(medium, root, limit, False))
    return image_samples(limit, root) if medium == "image" else video_samples(limit, root)


def measure(job: Job, questions: Questions, batch_size: int = 50) -> Cell:
    """Answer the job's questions under its policy: which were right, and the visual tokens the language model
    processed (``vlmzip.Stats.visual_tokens_by_layer``, averaged over layers)."""
    with torch.no_grad():  # scoped: measure also runs in the caller's own process (workers=1, tests)
        return _measure(job, questions, batch_size)


def _measure(job: Job, questions: Questions, batch_size: int) -> Cell:
    answering = _predictor(job.model, job.device)
    root = bundled.dataset_path("image") if job.check else questions.root(job.medium)
    samples = _samples(job.medium, root, None if job.check else questions.limit, job.blank)
    tokens = [0, 0.0]  # in, seen

    def count() -> None:
        stats = vlmzip.stats(answering.model)
        tokens[0] += sum(stats.visual_tokens_in)
        tokens[1] += sum(stats.equivalent_visual_tokens())

    started = time.time()
    right = answers(answering, job.policy, samples, batch_size, count)
    return Cell(
        model=job.model,
        medium=job.medium,
        source=job.source,
        label=job.label,
        method=job.method,
        stage=job.stage,
        keep=job.keep,
        policy=job.policy,
        correct="".join("1" if r else "0" for r in right),
        visual_in=tokens[0],
        visual_seen=tokens[1],
        seconds=round(time.time() - started, 2),
        device=torch.cuda.get_device_name() if job.device.startswith("cuda") else job.device,
        check=job.check,
    )


def _quiet_worker(threads: int) -> None:
    """A worker process: its share of the cores, no gradients, no progress bars of its own."""
    import transformers

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    # float32 as on the CPU: TF32 (cuDNN's default for convolutions) would round the patch embeddings to 10 bits
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------------------------------------------ main


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.eval.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=bundled.MODELS, default=list(bundled.MODELS))
    parser.add_argument("--methods", nargs="+", help="measure these methods only (random is always measured)")
    parser.add_argument("--media", nargs="+", choices=("image", "video"), default=["image", "video"])
    parser.add_argument("--questions", type=int, help="N fresh test-split image questions instead of the bundled")
    parser.add_argument("--video-questions", type=int, help="N fresh video questions (3 a clip) instead")
    parser.add_argument("--seed", type=int, default=1, help="of the fresh questions (0 draws the bundled ones)")
    parser.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the CPU checks stay on the CPU)")
    parser.add_argument("--workers", type=int, default=1, help="processes measuring cells, sharing the cores")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--results", type=Path, help="JSON lines, a cell a line (default: a new runs/fidelity-*)")
    parser.add_argument("--resume", action="store_true", help="measure only the cells --results lacks")
    parser.add_argument("--out", type=Path, default=Path("docs/fidelity.md"))
    parser.add_argument("--json", type=Path, help="also write every table's numbers there")
    return parser.parse_args(argv)


def _methods(names: Sequence[str] | None) -> list[vlmzip.MethodInfo]:
    """The methods named (all if none): a name, or a variant with parameters fixed (``vtc-cls:at_layer=2``), its
    own row, swept over ``keep`` like the others."""
    known = {m.name: m for m in vlmzip.methods()}
    unknown = sorted({n.partition(":")[0] for n in names or ()} - set(known))
    if unknown:
        raise vlmzip.VlmzipError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = []
    for name in names or known:
        base, _, fixed = name.partition(":")
        method = replace(known[base], name=name) if fixed else known[base]
        if fixed and policy(method, KEEPS[0]) is not None:
            vlmzip.Policy.parse(policy(method, KEEPS[0]))  # a bad parameter fails now, not in every cell
        chosen.append(method)
    return chosen


def _command(args: argparse.Namespace, cells: Sequence[Cell]) -> str:
    """The command line that reproduces the tables of ``cells`` (what changes the numbers, not where or how fast;
    the methods are those in the results file, which several ``--methods`` runs may have filled)."""
    parts = ["python -m vlmzip.eval.fidelity"]
    for flag in ("questions", "video_questions", "limit"):
        if getattr(args, flag):
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    if args.questions or args.video_questions:
        parts.append(f"--seed {args.seed}")
    if args.models != list(bundled.MODELS):
        parts.append("--models " + " ".join(args.models))
    measured = {cell.method for cell in cells if cell.method and not cell.check}
    registered = [m.name for m in vlmzip.methods()]
    if measured != set(registered):
        parts.append("--methods " + " ".join(sorted(measured, key=lambda m: (m not in registered, m))))
    if len(args.media) == 1:
        parts.append(f"--media {args.media[0]}")
    return " ".join(parts)


def _header(args: argparse.Namespace) -> dict[str, object]:
    """What the results file's cells answered: resuming with other questions would mix unpaired cells."""
    seed = args.seed if args.questions or args.video_questions else None
    return {"questions": args.questions, "video_questions": args.video_questions, "seed": seed, "limit": args.limit}


def sweep(args: argparse.Namespace, root: Path) -> tuple[Path, list]:
    """Measure the cells the results file lacks; returns the file and the jobs that failed."""
    results = args.results or Path("runs") / time.strftime("fidelity-%Y%m%d-%H%M%S.jsonl")
    done = {cell.key for cell in open_results(results, _header(args), args.resume)}
    questions = Questions(limit=args.limit)
    if args.questions or args.video_questions:
        questions = replace(fresh_questions(root, args.seed, args.questions, args.video_questions), limit=args.limit)
    jobs = plan(args.models, _methods(args.methods), questions, args.device, args.media)
    jobs = [job for job in jobs if job.key not in done]
    print(f"{len(jobs)} cells to measure ({len(done)} already in {results})", file=sys.stderr, flush=True)
    measuring = functools.partial(measure, questions=questions, batch_size=args.batch_size)
    failed = run(jobs, measuring, results, args.workers, Progress(len(jobs)), initializer=_quiet_worker)
    return results, failed


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="vlmzip-fidelity-") as root:
            results, failed = sweep(args, Path(root))
    except vlmzip.VlmzipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, cells = read_results(results)
    write(args.out, cells, _command(args, cells))
    print(f"wrote the tables of {results} into {args.out.resolve()}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(summary(cells), indent=2) + "\n", encoding="utf-8")
    for job, error in failed:
        print(f"not measured: {job.model} {job.medium} {job.label}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
