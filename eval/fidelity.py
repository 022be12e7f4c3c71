"""Accuracy against visual tokens kept, for every method, on the shipped fixtures: ``docs/fidelity.md``.

``python -m vlmzip.eval.fidelity [--models llava gemma3 qwen2_5_vl] [--limit N] [--out docs/fidelity.md]``
answers the bundled test questions through ``vlmzip eval``'s predictor and scoring (official multiple-choice
prompt, greedy, one token) with each model uncompressed, with the image blanked, and under every registered method
at 50, 25, 10 and 5% of visual tokens kept; random pruning is in every table as the baseline a method must
beat. The Qwen2.5-VL fixture is also measured on the bundled video questions. ``--models`` re-measures those
models' tables and keeps the others in ``--out`` as they were.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import vlmzip
from vlmzip.eval import bundled, fixtures, mcq, synthetic, videomme
from vlmzip.eval.predictor import ModelPredictor, load
from vlmzip.eval.samples import Sample
from vlmzip.eval.scoring import score
from vlmzip.eval.video import Sampling

__all__ = [
    "KEEPS",
    "accuracy",
    "blanked",
    "image_samples",
    "main",
    "policy",
    "section",
    "sweep",
    "video_samples",
    "write",
]

KEEPS: tuple[float, ...] = (0.5, 0.25, 0.10, 0.05)
PREFILL_LAYER = 2  # prefill methods score at this layer (of 4 in the fixtures)


def policy(method: vlmzip.MethodInfo, keep: float) -> str:
    """The policy that keeps ``keep`` of the visual tokens with ``method`` (prefill methods at layer 2)."""
    layer = f"layer={PREFILL_LAYER}," if "layer" in method.params else ""
    return f"{method.name}:{layer}keep={keep:g}"


def image_samples(limit: int | None = None) -> list[Sample]:
    """The bundled image questions (the first ``limit``), as ``vlmzip eval --bench images`` reads them."""
    data = mcq.load(bundled.dataset_path("image"))
    return list(mcq.iter_samples(data, mcq.select(data, limit), missing="fail"))


def video_samples(limit: int | None = None) -> list[Sample]:
    """The bundled video questions with every frame, as ``vlmzip eval --bench videos`` reads them."""
    data = videomme.load(bundled.dataset_path("video"))
    every_frame = Sampling(fps=bundled.VIDEO_FPS, max_frames=64)
    return list(videomme.iter_samples(data, videomme.select(data, limit=limit), every_frame, missing="fail"))


def accuracy(predictor: ModelPredictor, policy: str, samples: Sequence[Sample], batch_size: int = 50) -> float:
    """Fraction of ``samples`` the predictor answers right under ``policy``, scored as ``vlmzip eval`` scores.
    A batch holds consecutive samples of one frame count (a clip's questions, or images), at most ``batch_size``:
    padded to their longest clip, batches of 50 of the 180 video questions took 109 s on 2 cores, a clip's own
    questions 45 s (and one question at a time 38 s; images: 15 s one at a time, 9 s by 50)."""
    right = 0
    for _, run in itertools.groupby(samples, key=lambda sample: len(sample.frames)):
        run = list(run)
        for start in range(0, len(run), batch_size):
            batch = run[start : start + batch_size]
            predictions = predictor.predict(policy, batch)
            right += sum(score(s, p.response).correct for s, p in zip(batch, predictions, strict=True))
    return right / len(samples)


def blanked(samples: Sequence[Sample]) -> list[Sample]:
    """The same questions over an empty scene (background only), every frame."""
    side = samples[0].frames[0].shape[0]
    empty = synthetic.render([synthetic.Scene(())], side)[0].permute(1, 2, 0).numpy()
    return [replace(s, frames=[empty] * len(s.frames)) for s in samples]


def predictor(name: str) -> ModelPredictor:
    """Bundled model ``name`` in float32 on the CPU, answering with one token (the letter)."""
    model, processor = load(bundled.model_path(name), torch.float32, "cpu")
    return ModelPredictor(model, processor, max_new_tokens=1)


def sweep(name: str, samples: Sequence[Sample]) -> dict:
    """Accuracy of bundled model ``name`` on ``samples``: uncompressed, blanked, and every method at ``KEEPS``."""
    answering = predictor(name)
    started = time.time()
    result = {"model": name, "medium": samples[0].medium, "questions": len(samples)}
    result["all"] = accuracy(answering, "none", samples)
    result["blank"] = accuracy(answering, "none", blanked(samples))
    result["methods"] = {}
    desc = f"{name} {result['medium']}"
    progress = tqdm(total=len(vlmzip.methods()) * len(KEEPS), desc=desc, unit="policy", disable=None)
    for method in vlmzip.methods():
        row = {}
        for keep in KEEPS:
            row[f"{keep:g}"] = accuracy(answering, policy(method, keep), samples)
            progress.update()
        result["methods"][method.name] = {"stage": method.stage, "policy": policy(method, 0.5), "accuracy": row}
    progress.close()
    result["seconds"] = round(time.time() - started, 1)
    return result


BEGIN, END = "<!-- fidelity:begin (written by python -m vlmzip.eval.fidelity) -->", "<!-- fidelity:end -->"


def section(result: dict, command: str) -> str:
    """The table of one sweep (a model and a medium): a row per method, a column per fraction of visual tokens
    kept, and the command and machine that measured it."""
    name = result["model"]
    tokens = fixtures.visual_tokens(name, fixtures.saved_spec(bundled.model_path(name)))
    unit = "visual tokens per image" if result["medium"] == "image" else "visual tokens per 2 frames"
    lines = [
        f"### {name} — {result['medium']} questions ({result['questions']}, {tokens} {unit}, {result['seconds']} s)",
        "",
        f"Written by `{command}` ({platform.machine()}, torch {torch.__version__}).",
        "",
        "| method | stage | 100% | " + " | ".join(f"{k:.0%}" for k in KEEPS) + " |",
        "|---|---|---:|" + "---:|" * len(KEEPS),
    ]
    baseline = result["methods"]["random"]["accuracy"]
    for method, m in sorted(result["methods"].items(), key=lambda kv: kv[0] != "random"):
        cells = []
        for k in KEEPS:
            value = m["accuracy"][f"{k:g}"]
            better = m["stage"] != "decode" and method != "random" and value > baseline[f"{k:g}"]
            cells.append(f"**{value:.1%}**" if better else f"{value:.1%}")
        label = f"{method} (baseline)" if method == "random" else method
        lines.append(f"| {label} | {m['stage']} | {result['all']:.1%} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Image blanked, nothing pruned: {result['blank']:.1%}. Chance: 25%. Bold: above random pruning. Decode-stage"
        " methods evict cache entries after the prompt pass, which already produced the one-letter answer.",
    ]
    return "\n".join(lines)


_HEADING = re.compile(r"^### (\S+) — (\w+) questions", re.MULTILINE)


def sections(text: str) -> dict[tuple[str, str], str]:
    """The tables of a generated block, by (model, medium); what precedes the first table is dropped."""
    headings = list(_HEADING.finditer(text))
    bounds = [h.start() for h in headings] + [len(text)]
    return {(h.group(1), h.group(2)): text[bounds[i] : bounds[i + 1]].strip() for i, h in enumerate(headings)}


def write(path: Path, results: Sequence[dict], command: str) -> None:
    """Put the tables of ``results`` into the generated block of ``path``, replacing those of the same model and
    medium and keeping the others (a sweep of one model leaves the rest as they were measured); the hand-written
    text around the block stays. Creates the file if need be."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    head, tail, tables = old, "", {}
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
        tables = sections(body)
    tables.update({(r["model"], r["medium"]): section(r, command) for r in results})
    order = {name: i for i, name in enumerate(bundled.MODELS)}
    ordered = sorted(tables.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1] != "image"))
    block = "\n\n".join([BEGIN, *(table for _, table in ordered), END])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + block + (tail or "\n"), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.eval.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=bundled.MODELS, default=list(bundled.MODELS))
    parser.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/fidelity.md"))
    parser.add_argument("--json", type=Path, help="also write the numbers there")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    images = image_samples(args.limit)
    results = []
    for name in args.models:
        results.append(sweep(name, images))
        print(json.dumps(results[-1]), flush=True)
        if name == "qwen2_5_vl":
            results.append(sweep(name, video_samples(args.limit)))
            print(json.dumps(results[-1]), flush=True)
    command = "python -m vlmzip.eval.fidelity" + (f" --limit {args.limit}" if args.limit else "")
    if args.models != list(bundled.MODELS):
        command += " --models " + " ".join(args.models)
    write(args.out, results, command)
    print(f"wrote the tables into {args.out.resolve()}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
