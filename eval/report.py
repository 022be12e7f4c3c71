"""``vlmzip report RUN_DIR...``: one table of every policy of every run, and (with the ``plot`` extra) a
picture of each run's metric (accuracy; a caption bench's F1) against time to first token and against KV memory,
with the Pareto front marked.

Runs scored differently (another metric, another answer extractor, or subtitles made in another style) are
refused in one table unless ``--mixed-scoring`` is given: their scores differ by how the answers were read, not
only by policy. Each row names its run's scoring (``scoring`` column)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmzip.errors import InputError
from vlmzip.eval.runner import mib, number, percent, write_results


def collect(run_dirs: list[Path], mixed_scoring: bool = False) -> list[dict[str, Any]]:
    """One row per (run, policy): accuracy, retained, efficiency, and the run's ``scoring``. Results are
    recomputed from each run's samples so a report never shows a stale ``results.json``. :class:`InputError`
    when the runs were scored differently (:func:`check_scoring`), unless ``mixed_scoring``."""
    rows, scorings = [], {}
    for run_dir in run_dirs:
        if not (run_dir / "samples.jsonl").exists():
            raise InputError(f"{run_dir} is not a vlmzip eval run (no samples.jsonl); pass the --out of `vlmzip eval`")
        results = write_results(run_dir)
        scorings[run_dir.name] = {"metric": results["metric"], **results["scoring"]}
        for policy, result in results["policies"].items():
            rows.append(
                {
                    "run": run_dir.name,
                    "policy": policy,
                    **{k: v for k, v in result.items() if k != "summary"},
                    "metric": results["metric"],
                    "scoring": label(scorings[run_dir.name]),
                }
            )
    if not mixed_scoring:
        check_scoring(scorings)
    return rows


def label(scoring: dict[str, str | None]) -> str:
    """A run's scoring in a few words: ``extractor lmms-eval, subtitles lmms-eval`` (a metric other than
    accuracy first: ``f1, extractor captions``)."""
    metric = scoring.get("metric") or "accuracy"
    text = ("" if metric == "accuracy" else f"{metric}, ") + f"extractor {scoring.get('extractor')}"
    return text + (f", subtitles {scoring['subtitles_style']}" if scoring.get("subtitles_style") else "")


def check_scoring(scorings: dict[str, dict[str, str | None]]) -> None:
    """:class:`InputError` naming the difference when runs (name -> ``results.json``'s ``scoring``) used
    different answer extractors, or different subtitle styles among the runs with subtitles."""
    differences = []
    for key, what in (("metric", "metric"), ("extractor", "answer extractor"), ("subtitles_style", "subtitles style")):
        by_value: dict[str, list[str]] = {}
        for run, scoring in scorings.items():
            if scoring.get(key) is not None:
                by_value.setdefault(str(scoring[key]), []).append(run)
        if len(by_value) > 1:
            shown = " vs ".join(f"{value} ({', '.join(runs)})" for value, runs in by_value.items())
            differences.append(f"{what}: {shown}")
    if differences:
        raise InputError(
            f"these runs were scored differently ({'; '.join(differences)}): their accuracies differ by how the "
            "answers were read, not only by policy. Report runs scored alike, or pass --mixed-scoring to put them "
            "in one table anyway (its scoring column names each run's)"
        )


def _score(row: dict[str, Any]) -> float | None:
    """A row's headline: its run's metric (accuracy unless the row names another)."""
    return row.get(row.get("metric") or "accuracy")


def _metric_name(rows: list[dict[str, Any]]) -> str:
    """What the rows' headline is, for a column or an axis: their metric, or "score" when runs differ."""
    metrics = {r.get("metric") or "accuracy" for r in rows}
    return metrics.pop() if len(metrics) == 1 else "score"


def pareto(rows: list[dict[str, Any]], cost: str) -> set[int]:
    """Indices of the rows no other row beats on both score (higher: accuracy, or the run's metric) and ``cost``
    (lower)."""
    usable = [(i, _score(r), r[cost]) for i, r in enumerate(rows) if _score(r) is not None and r[cost]]
    return {
        i
        for i, accuracy, spent in usable
        if not any(a >= accuracy and c <= spent and (a, c) != (accuracy, spent) for _, a, c in usable)
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    front = pareto(rows, "first_token_ms")
    lines = [
        f"| run | policy | {_metric_name(rows)} | retained | visual tokens kept | KV MiB | TTFT ms | prefill ms "
        "| peak GiB | Pareto | scoring |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {r['run']} | {r['policy']} | {percent(_score(r))} | {percent(r['retained'])} | "
            f"{number(r['visual_tokens_kept'])} | {number(mib(r.get('kv_bytes')), 2)} | "
            f"{number(r['first_token_ms'])} | {number(r['prefill_ms'])} | "
            f"{number(r['peak_gib'], 2)} | {'*' if i in front else ''} | {r.get('scoring', '-')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """The score (accuracy, or the runs' metric) against time to first token and against KV-cache bytes per
    sample (visual tokens kept for runs recorded before KV bytes were)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'vlmzip[plot]'") from None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    memory = ("kv_bytes", "KV cache per sample (bytes)")
    if not any(r.get("kv_bytes") for r in rows):
        memory = ("visual_tokens_kept", "visual tokens kept")
    scored = f"{_metric_name(rows)} (%)"
    for axis, (cost, label) in zip(axes, (("first_token_ms", "time to first token (ms)"), memory)):
        front = sorted(pareto(rows, cost), key=lambda i: rows[i][cost])
        for r in rows:
            if _score(r) is not None and r[cost]:
                axis.scatter(r[cost], 100 * _score(r), s=30)
                axis.annotate(
                    r["policy"], (r[cost], 100 * _score(r)), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        axis.plot(
            [rows[i][cost] for i in front],
            [100 * _score(rows[i]) for i in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        axis.set_xlabel(label)
        axis.set_ylabel(scored)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(args) -> int:
    rows = collect(args.runs, mixed_scoring=getattr(args, "mixed_scoring", False))
    text = markdown(rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text + "\n")
        (args.out / "report.json").write_text(json.dumps(rows, indent=2))
        if args.plot:
            print(f"plot: {plot(rows, args.out / 'report.png')}")
    return 0


__all__ = ["check_scoring", "collect", "label", "markdown", "pareto", "plot"]
