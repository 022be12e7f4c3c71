"""``vlmzip report RUN_DIR...``: one table of every policy of every run, and (with the ``plot`` extra) a
picture of accuracy against time to first token and against KV memory, with the Pareto front marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmzip.errors import InputError
from vlmzip.eval.runner import mib, number, percent, write_results


def collect(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per (run, policy): accuracy, retained, efficiency. Results are recomputed from each run's
    samples so a report never shows a stale ``results.json``."""
    rows = []
    for run_dir in run_dirs:
        if not (run_dir / "samples.jsonl").exists():
            raise InputError(f"{run_dir} is not a vlmzip eval run (no samples.jsonl); pass the --out of `vlmzip eval`")
        for policy, result in write_results(run_dir)["policies"].items():
            rows.append({"run": run_dir.name, "policy": policy, **{k: v for k, v in result.items() if k != "summary"}})
    return rows


def pareto(rows: list[dict[str, Any]], cost: str) -> set[int]:
    """Indices of the rows no other row beats on both accuracy (higher) and ``cost`` (lower)."""
    usable = [(i, r["accuracy"], r[cost]) for i, r in enumerate(rows) if r["accuracy"] is not None and r[cost]]
    return {
        i
        for i, accuracy, spent in usable
        if not any(a >= accuracy and c <= spent and (a, c) != (accuracy, spent) for _, a, c in usable)
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    front = pareto(rows, "first_token_ms")
    lines = [
        "| run | policy | accuracy | retained | visual tokens kept | KV MiB | TTFT ms | prefill ms | peak GiB "
        "| Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {r['run']} | {r['policy']} | {percent(r['accuracy'])} | {percent(r['retained'])} | "
            f"{number(r['visual_tokens_kept'])} | {number(mib(r.get('kv_bytes')), 2)} | "
            f"{number(r['first_token_ms'])} | {number(r['prefill_ms'])} | "
            f"{number(r['peak_gib'], 2)} | {'*' if i in front else ''} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against time to first token and against KV-cache bytes per sample (visual tokens kept for runs
    recorded before KV bytes were)."""
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
    for axis, (cost, label) in zip(axes, (("first_token_ms", "time to first token (ms)"), memory)):
        front = sorted(pareto(rows, cost), key=lambda i: rows[i][cost])
        for r in rows:
            if r["accuracy"] is not None and r[cost]:
                axis.scatter(r[cost], 100 * r["accuracy"], s=30)
                axis.annotate(
                    r["policy"], (r[cost], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        axis.plot(
            [rows[i][cost] for i in front],
            [100 * rows[i]["accuracy"] for i in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy (%)")
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(args) -> int:
    rows = collect(args.runs)
    text = markdown(rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text + "\n")
        (args.out / "report.json").write_text(json.dumps(rows, indent=2))
        if args.plot:
            print(f"plot: {plot(rows, args.out / 'report.png')}")
    return 0


__all__ = ["collect", "markdown", "pareto", "plot"]
