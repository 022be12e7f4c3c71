"""The evaluation loop behind ``vlmzip eval``: every policy on the same samples, resumable, summarised.

Samples are decoded once and handed to each policy in turn. Every scored sample is appended to
``samples.jsonl`` and flushed at once, so a killed run loses at most the line being written; ``resume``
skips the (policy, question) pairs already there and drops a torn last line. ``results.json`` is always
recomputed from ``samples.jsonl``: the bench's metric per policy (accuracy by default; overall and by group,
with intervals), the metric retained relative to ``none`` where it ran, and the efficiency figures beside it.
The bench scores each answer and sums the rows up (``Bench.score`` / ``Bench.summarize``); a run directory
names its bench in ``config.json``, which is how results are recomputed later (``vlmzip report``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from vlmzip.errors import InputError
from vlmzip.eval import benches
from vlmzip.eval.benches import Bench
from vlmzip.eval.extractors import extract_answer
from vlmzip.eval.samples import Sample

DEFAULTS = {"template": "official", "sampler": "linspace", "extractor": "vlmzip", "max_new_tokens": 16}
SAMPLES = "samples.jsonl"
RESULTS = "results.json"
CONFIG = "config.json"


@dataclass(frozen=True)
class Prediction:
    """A model's answer to one sample and what it cost."""

    response: str | None
    visual_tokens_in: int = 0
    visual_tokens_kept: int = 0
    prefill_ms: float | None = None
    first_token_ms: float | None = None
    peak_gib: float | None = None
    kv_bytes: int | None = None  # the sample's key/value cache after generation (valid entries, all layers)


class Predictor(Protocol):
    """Answers a batch of samples under a policy (the model, its processor and decoding are its business)."""

    def predict(self, policy: str, samples: list[Sample]) -> list[Prediction]: ...


def run(
    samples: Iterable[Sample],
    predictor: Predictor,
    policies: list[str],
    out_dir: Path,
    config: dict[str, Any],
    batch_size: int = 1,
    resume: bool = False,
    total: int | None = None,
    extractor: str = "vlmzip",
    bench: Bench | None = None,
) -> dict[str, Any]:
    """Score every sample under every policy into ``out_dir`` (by ``bench``, default the one ``config`` names;
    multiple-choice answers read by ``extractor``, see :mod:`~vlmzip.eval.extractors`); returns (and writes) the
    results. A progress bar (on a terminal) counts samples, out of ``total`` when given."""
    if not policies or len(set(policies)) != len(policies):
        raise InputError(f"give each policy once, at least one: got {policies}")
    extract_answer("", extractor)  # an unknown extractor fails here, before any sample
    bench = bench or bench_named(config.get("bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _start(out_dir, config, resume)
    progress = tqdm(total=total, unit="sample", desc=out_dir.name, disable=None)  # disable=None: only on a tty
    with (out_dir / SAMPLES).open("a", encoding="utf-8") as log, progress:
        for batch in _batches(samples, batch_size):
            progress.update(len(batch))
            for policy in policies:
                todo = [s for s in batch if (policy, s.question.question_id) not in done]
                answerable = [s for s in todo if s.error is None]
                predictions = _predict(predictor, policy, answerable)
                for sample in todo:
                    _append(log, _record(bench, policy, sample, predictions.get(id(sample)), extractor))
                    done.add((policy, sample.question.question_id))
    return write_results(out_dir, policies, bench)


def bench_named(name: str | None) -> Bench:
    """The registered bench ``name`` (a run's ``config.json`` names it), or the multiple-choice default for a run
    that names none, or a bench not registered in this process."""
    try:
        return benches.bench_class(str(name))() if name else Bench()
    except InputError:
        return Bench()


def _run_bench(out_dir: Path) -> Bench:
    path = out_dir / CONFIG
    config = json.loads(path.read_text()) if path.exists() else {}
    return bench_named(config.get("bench"))


def _start(out_dir: Path, config: dict[str, Any], resume: bool) -> set[tuple[str, str]]:
    samples, config_path = out_dir / SAMPLES, out_dir / CONFIG
    if samples.exists() and samples.stat().st_size and not resume:
        raise InputError(f"{out_dir} already holds results: pass --resume to continue that run, or a new --out")
    if resume and config_path.exists():
        previous = json.loads(config_path.read_text())
        keys = (set(config) | set(previous)) - {"resume", "policies"}  # an option added since reads "None" there
        changed = sorted(k for k in keys if str(previous.get(k)) != str(config.get(k)))
        if changed:
            raise InputError(f"cannot resume {out_dir}: its run had different {', '.join(changed)}; use a new --out")
    config_path.write_text(json.dumps(config, indent=2, default=str))
    return {(row["policy"], row["question_id"]) for row in read_samples(out_dir, repair=True)}


def read_samples(out_dir: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The scored samples of a run. A torn last line (the run was killed mid-write) is ignored, and with
    ``repair`` cut from the file so appending continues on a clean line."""
    path = out_dir / SAMPLES
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end = [], 0
    for line in data.splitlines(keepends=True):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if good_end + len(line) < len(data):  # damage before the last line is not a torn write
                raise InputError(f"{path} is corrupt after byte {good_end}; it cannot be resumed") from None
            break
        good_end += len(line)
    if repair and good_end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    if repair and good_end and not data[:good_end].endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")
    return rows


def write_results(out_dir: Path, policies: list[str] | None = None, bench: Bench | None = None) -> dict[str, Any]:
    """Recompute ``results.json`` from ``samples.jsonl``: per policy the bench's metric (default: the bench the
    run's config names), retained %, efficiency."""
    bench = bench or _run_bench(out_dir)
    rows = read_samples(out_dir)
    order = policies or list(dict.fromkeys(row["policy"] for row in rows))
    per_policy = {policy: _policy_result(bench, [r for r in rows if r["policy"] == policy]) for policy in order}
    baseline = per_policy.get("none", {}).get(bench.metric)
    for result in per_policy.values():
        value = result[bench.metric]
        result["retained"] = value / baseline if baseline and value is not None else None
    results = {"metric": bench.metric, "scoring": scoring(rows), "policies": per_policy}
    (out_dir / RESULTS).write_text(json.dumps(results, indent=2))
    return results


def scoring(rows: list[dict[str, Any]]) -> dict[str, str | None]:
    """How a run's answers were scored, from its samples: the answer extractor and, where subtitles were used,
    their style (rows from before styles were recorded used vlmzip's); several are joined with commas."""
    extractors = sorted({str(r.get("extractor")) for r in rows})
    styles = sorted({str(r.get("subtitles_style") or "vlmzip") for r in rows if r.get("subtitles")})
    return {"extractor": ",".join(extractors) or None, "subtitles_style": ",".join(styles) or None}


def _policy_result(bench: Bench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    headline = bench.summarize(rows)
    answered = [r for r in rows if r["error"] is None]
    return {
        **{key: value for key, value in headline.items() if key != "summary"},
        "visual_tokens_in": _mean(r["visual_tokens_in"] for r in answered),
        "visual_tokens_kept": _mean(r["visual_tokens_kept"] for r in answered),
        "prefill_ms": _median(r["prefill_ms"] for r in answered),
        "first_token_ms": _median(r["first_token_ms"] for r in answered),
        "peak_gib": max((r["peak_gib"] for r in answered if r["peak_gib"] is not None), default=None),
        "kv_bytes": _mean(r.get("kv_bytes") for r in answered),
        "summary": headline["summary"],
    }


def table(results: dict[str, Any]) -> str:
    """A markdown table of the results, one row per policy, headed by the run's metric."""
    metric = results.get("metric", "accuracy")
    lines = [
        f"| policy | {metric} | 95% CI | retained | visual tokens kept | KV MiB | prefill ms | TTFT ms | peak GiB "
        "| evaluated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in results["policies"].items():
        low, high = r["ci95"] or (None, None)
        lines.append(
            f"| {policy} | {percent(r[metric])} | {percent(low)}-{percent(high)} | "
            f"{percent(r['retained'])} | {number(r['visual_tokens_kept'])} | {number(mib(r.get('kv_bytes')), 2)} | "
            f"{number(r['prefill_ms'])} | "
            f"{number(r['first_token_ms'])} | {number(r['peak_gib'], 2)} | {r['evaluated']}/{r['total']} |"
        )
    return "\n".join(lines)


def mib(value: float | None) -> float | None:
    """Bytes in MiB (None stays None)."""
    return None if value is None else value / 2**20


def _predict(predictor: Predictor, policy: str, samples: list[Sample]) -> dict[int, Prediction]:
    if not samples:
        return {}
    predictions = predictor.predict(policy, samples)
    if len(predictions) != len(samples):
        raise RuntimeError(f"the predictor answered {len(predictions)} of {len(samples)} samples")
    return dict(zip(map(id, samples), predictions))


def _record(bench: Bench, policy: str, sample: Sample, prediction: Prediction | None, extractor: str) -> dict[str, Any]:
    record = bench.score(sample, prediction.response if prediction else None, extractor)
    efficiency = asdict(prediction) if prediction else asdict(Prediction(None))
    efficiency.pop("response")
    return {"policy": policy, **record, **efficiency}


def _append(log, row: dict[str, Any]) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()
    os.fsync(log.fileno())  # a kill after this line cannot lose it


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    if size < 1:
        raise InputError(f"batch size must be at least 1, got {size}")
    iterator = iter(samples)
    while batch := list(islice(iterator, size)):
        yield batch


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def category_table(results: dict[str, Any]) -> str | None:
    """Accuracy by category (rows) and policy (columns), or None when the questions have no categories."""
    per_policy = {policy: r["summary"].get("by_category") for policy, r in results["policies"].items()}
    if not any(per_policy.values()):
        return None
    categories = sorted({name for groups in per_policy.values() if groups for name in groups})
    lines = [f"| category | {' | '.join(per_policy)} |", "|---|" + "---|" * len(per_policy)]
    for name in categories:
        cells = []
        for groups in per_policy.values():
            tally = (groups or {}).get(name)
            cells.append("-" if tally is None else f"{percent(tally['accuracy'])} of {tally['evaluated']}")
        lines.append(f"| {name or '(none)'} | {' | '.join(cells)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the command


@dataclass
class _Plan:
    bench: Bench
    model: Path
    data: Path | None  # None: a generated bench's
    policies: list[str]
    notes: list[str]


def plan(args) -> _Plan:
    """Resolve the bench, model, data, policies and defaults of ``vlmzip eval`` (``args`` is updated in place
    with what was chosen, so the run's config records it); raises :class:`InputError` for a missing half."""
    from vlmzip.eval import bundled
    from vlmzip.policy import Policy

    notes: list[str] = []
    cls, embedded = benches.choose(args)
    bench = cls()
    data = bench.data_path(args)
    if args.model is None:  # choose() let it through: the bench brings a default model
        args.model = cls.default_model
        notes.append(f"model: the bundled {args.model} fixture (--model {'|'.join(bundled.MODELS)}|PATH)")
    model = _model_path(args.model)
    if args.policy:
        policies = list(dict.fromkeys(["none", *(str(Policy.parse(p)) for p in args.policy)]))
    elif cls.default_policies:
        policies = list(cls.default_policies)
        notes.append(f"policies: {', '.join(policies)} (--policy P, repeatable, to choose)")
    else:
        policies = ["none"]
    bench.configure(args, notes)
    for option, default in DEFAULTS.items():  # None until here, so that a preset (--compat) sees what was given
        if getattr(args, option, None) is None:
            setattr(args, option, default)
    if embedded:
        if args.device is None:
            args.device = "cpu"
            notes.append("device: cpu (--device)")
        if args.limit is None:
            args.limit = cls.embedded_limit
            notes.append(f"questions: at most {args.limit} (--limit N)")
    args.device = args.device or "auto"
    if args.out is None:
        if args.resume:
            raise InputError("--resume continues the run in --out: name that directory")
        args.out = Path("runs") / f"eval-{cls.name}-{model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        notes.append(f"out: {args.out} (--out DIR)")
    args.bench, args.model = cls.name, str(model)
    if cls.data is not None:  # a bundled bench records its set under its loader's data option
        setattr(args, cls.data.dest, data)
    if embedded:
        notes.insert(0, f"no --model or data given: {cls.embedded_note}")
    return _Plan(bench, model, None if data is None else Path(data), policies, notes)


def _model_path(name: str) -> Path:
    from vlmzip.eval import bundled

    try:
        return bundled.resolve(name)
    except ValueError as e:
        raise InputError(f"--model {e}") from None


def main(args) -> int:
    import torch
    from accelerate import PartialState

    from vlmzip.eval import parallel
    from vlmzip.eval.bench import versions
    from vlmzip.eval.predictor import ModelPredictor, load
    from vlmzip.eval.video import Sampling

    chosen = plan(args)
    # one process unless started by `accelerate launch` / torchrun; cpu=True lets CPU processes form a group too
    processes = PartialState(cpu=not torch.cuda.is_available())
    world, rank = processes.num_processes, processes.process_index
    out = args.out if world == 1 else parallel.rank_dir(args.out, rank)
    sampling = Sampling(args.frames, args.sampler, args.fps, args.max_frames)
    loaded = chosen.bench.load(args, chosen.data, sampling, rank, world)
    samples, described, total = loaded.samples, loaded.described, loaded.total
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if world > 1 and device.startswith("cuda"):
        device = str(processes.device)  # one GPU per process
    elif args.device == "auto" and device == "cuda":
        device = "auto"  # one process: spread a model too large for one GPU over all of them
    for note in chosen.notes:
        print(f"vlmzip eval: {note}")
    print(
        f"vlmzip eval: {described['questions']} of {total} questions x {len(chosen.policies)} policies, "
        f"{args.model} on {device} in {args.dtype}, into {out}" + (f" (process {rank} of {world})" if world > 1 else "")
    )
    model, processor = load(chosen.model, getattr(torch, args.dtype), device)
    config = {
        **{key: str(value) for key, value in vars(args).items() if key not in ("run", "resume", "policy")},
        "policies": chosen.policies,
        "sampling": sampling.describe(),
        **described,  # after sampling: a bench that samples its own way says how
        "versions": versions(),
    }
    started = time.perf_counter()
    results = run(
        samples,
        ModelPredictor(model, processor, args.max_new_tokens),
        chosen.policies,
        out,
        config,
        args.batch_size,
        args.resume,
        total=described["questions"],
        extractor=args.extractor,
        bench=chosen.bench,
    )
    if world > 1:
        processes.wait_for_everyone()
        if not processes.is_main_process:
            return 0
        parallel.merge(args.out, world, SAMPLES, CONFIG)
        results = write_results(args.out, chosen.policies, chosen.bench)
    print(table(results))
    details = chosen.bench.details(results)
    if details:
        print(f"\n{details}")
    print(f"\n{args.out} ({time.perf_counter() - started:.1f} s)")
    return 0
