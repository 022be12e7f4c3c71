"""Accuracy against visual tokens kept, for every method, on the shipped fixtures: ``docs/fidelity.md``.

``python -m vlmzip.eval.fidelity [--models llava gemma3 qwen2_5_vl] [--limit N] [--out docs/fidelity.md]``
answers the bundled test questions (official multiple-choice prompt, greedy, one token, the letter extracted as
``vlmzip eval`` does) with each model uncompressed, with the image blanked, and under every registered method
at 50, 25, 10 and 5% of visual tokens kept; random pruning is in every table as the baseline a method must
beat. The Qwen2.5-VL fixture is also measured on the bundled video questions.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import vlmzip
from vlmzip.eval import bundled, fixtures, synthetic, videomme

__all__ = ["KEEPS", "accuracy", "main", "markdown", "policy", "sweep"]

KEEPS: tuple[float, ...] = (0.5, 0.25, 0.10, 0.05)
PREFILL_LAYER = 2  # prefill methods score at this layer (of 4 in the fixtures)


def policy(method: vlmzip.MethodInfo, keep: float) -> str:
    """The policy that keeps ``keep`` of the visual tokens with ``method`` (prefill methods at layer 2)."""
    layer = f"layer={PREFILL_LAYER}," if "layer" in method.params else ""
    return f"{method.name}:{layer}keep={keep:g}"


@dataclass(frozen=True)
class Item:
    """One bundled question: its prompt text, answer letter, and pixels (uint8 ``[3, H, W]`` or ``[T, 3, H, W]``)."""

    prompt: str
    answer: str
    pixels: torch.Tensor


def image_items(limit: int | None = None) -> list[Item]:
    records = synthetic.load_image_set(bundled.dataset_path("image"), "test")[:limit]
    return [Item(synthetic.mc_prompt(r.question, "image"), r.question.answer, _png(r.image)) for r in records]


def video_items(limit: int | None = None) -> list[Item]:
    data = videomme.load(bundled.dataset_path("video"))
    questions = videomme.select(data, limit=limit)
    every_frame = videomme.Sampling(fps=bundled.VIDEO_FPS, max_frames=64)
    items = []
    for sample in videomme.iter_samples(data, questions, every_frame, missing="fail"):
        frames = torch.from_numpy(np.stack(sample.frames)).permute(0, 3, 1, 2).contiguous()
        items.append(Item(sample.prompt, sample.question.answer, frames))
    return items


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()


@torch.no_grad()
def accuracy(model, processor, items: Sequence[Item], medium: str = "image", batch_size: int = 50) -> float:
    """Fraction of ``items`` whose greedy one-token answer is the right letter, under the model's current policy."""
    right = 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        texts = [fixtures.chat_prompt(processor, item.prompt, medium) for item in batch]
        visual = (
            {"videos": [item.pixels for item in batch]}
            if medium == "video"
            else {"images": torch.stack([item.pixels for item in batch])}
        )
        inputs = fixtures.encode(processor, texts, **visual)
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        answers = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        right += sum(videomme.extract_answer(a) == item.answer for a, item in zip(answers, batch, strict=True))
    return right / len(items)


def blanked(items: Sequence[Item]) -> list[Item]:
    """The same questions over an empty scene (background only)."""
    side = items[0].pixels.shape[-1]
    empty = synthetic.render([synthetic.Scene(())], side)[0]
    return [Item(i.prompt, i.answer, empty.expand_as(i.pixels).contiguous()) for i in items]


def sweep(name: str, items: Sequence[Item], medium: str = "image") -> dict:
    """Accuracy of bundled model ``name`` on ``items``: uncompressed, blanked, and every method at ``KEEPS``."""
    model, processor = fixtures.load(bundled.model_path(name))
    model.float().eval()
    started = time.time()
    result = {"model": name, "medium": medium, "questions": len(items)}
    vlmzip.restore(model)
    result["all"] = accuracy(model, processor, items, medium)
    result["blank"] = accuracy(model, processor, blanked(items), medium)
    result["methods"] = {}
    progress = tqdm(total=len(vlmzip.methods()) * len(KEEPS), desc=f"{name} {medium}", unit="policy", disable=None)
    for method in vlmzip.methods():
        row = {}
        for keep in KEEPS:
            vlmzip.compress(model, policy(method, keep))
            row[f"{keep:g}"] = accuracy(model, processor, items, medium)
            progress.update()
        vlmzip.restore(model)
        result["methods"][method.name] = {"stage": method.stage, "policy": policy(method, 0.5), "accuracy": row}
    progress.close()
    result["seconds"] = round(time.time() - started, 1)
    return result


BEGIN, END = "<!-- fidelity:begin (written by python -m vlmzip.eval.fidelity) -->", "<!-- fidelity:end -->"


def markdown(results: Sequence[dict], command: str) -> str:
    """The tables: one per (model, medium), a row per method, a column per fraction of visual tokens kept."""
    lines = [BEGIN, "", f"Written by `{command}` ({platform.machine()}, torch {torch.__version__}).", ""]
    for r in results:
        tokens = fixtures.visual_tokens(r["model"], fixtures.SPECS[r["model"]])
        unit = "visual tokens per image" if r["medium"] == "image" else "visual tokens per 2 frames"
        lines += [
            f"### {r['model']} — {r['medium']} questions ({r['questions']}, {tokens} {unit}, {r['seconds']} s)",
            "",
            "| method | stage | 100% | " + " | ".join(f"{k:.0%}" for k in KEEPS) + " |",
            "|---|---|---:|" + "---:|" * len(KEEPS),
        ]
        baseline = r["methods"]["random"]["accuracy"]
        for name, m in sorted(r["methods"].items(), key=lambda kv: kv[0] != "random"):
            cells = []
            for k in KEEPS:
                value = m["accuracy"][f"{k:g}"]
                better = m["stage"] != "decode" and name != "random" and value > baseline[f"{k:g}"]
                cells.append(f"**{value:.1%}**" if better else f"{value:.1%}")
            label = f"{name} (baseline)" if name == "random" else name
            lines.append(f"| {label} | {m['stage']} | {r['all']:.1%} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Image blanked, nothing pruned: {r['blank']:.1%}. Chance: 25%. Bold: above random pruning. Decode-stage"
            " methods evict cache entries after the prompt pass, which already produced the one-letter answer.",
            "",
        ]
    return "\n".join([*lines, END]) + "\n"


def write(path: Path, text: str) -> None:
    """Replace the generated block of ``path`` (hand-written text around it stays), or create the file."""
    if path.exists() and BEGIN in (old := path.read_text(encoding="utf-8")) and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + text.rstrip("\n") + rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmzip.eval.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=bundled.MODELS, default=list(bundled.MODELS))
    parser.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/fidelity.md"))
    parser.add_argument("--json", type=Path, help="also write the numbers there")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    images = image_items(args.limit)
    results = []
    for name in args.models:
        results.append(sweep(name, images, "image"))
        print(json.dumps(results[-1]), flush=True)
        if name == "qwen2_5_vl":
            results.append(sweep(name, video_items(args.limit), "video"))
            print(json.dumps(results[-1]), flush=True)
    command = "python -m vlmzip.eval.fidelity" + (f" --limit {args.limit}" if args.limit else "")
    if args.models != list(bundled.MODELS):
        command += " --models " + " ".join(args.models)
    write(args.out, markdown(results, command))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
