"""Can a fixture pick the option that names a place it can name? (training/README.md, "What the rounds taught".)

As ``positions.py`` (SMALL fixtures, one object, "Where is the <object>?"), but half the answers are the letter
of the multiple-choice prompt and half the bare words; then 256 validation questions are asked both ways and
scored for the row and column named and for the letter picked, and asked once more by their own answer
(``synthetic.option_lookup``: "Which option is top left?"), which needs no image, only the matching. ~0.1 s a
step on 2 CPU cores (Qwen2.5-VL):

    python -m training.diagnostics.options OUT_DIR STEPS [RUN ...]  # qwen-base10000 qwen-base100 ... gemma3 llava

Runs named ``...-several`` ask the same question about scenes of two to four objects (the shipped test set's).

Run one at a time: two trainings on 2 cores take ten times as long.
"""

import collections
import sys
from dataclasses import replace
from pathlib import Path

from training import loop
from training.diagnostics.positions import ONE_OBJECT, cell
from training.diagnostics.words_letters import answers
from vlmzip.eval import fixtures, synthetic

RUNS = {  # name: (family, arguments added to the common ones; a later flag overrides an earlier one)
    "qwen-base10000": ("qwen2_5_vl", []),  # Qwen2.5-VL's default base; the fixture before round 12
    "qwen-base100": ("qwen2_5_vl", ["--spec", "rope_theta=100"]),
    "qwen-base10": ("qwen2_5_vl", ["--spec", "rope_theta=10"]),
    "qwen-base100-4layers": ("qwen2_5_vl", ["--spec", "rope_theta=100", "text_layers=4"]),
    "qwen-base100-lr1e-3": ("qwen2_5_vl", ["--spec", "rope_theta=100", "--lr", "1e-3"]),
    # a fifth of the examples ask which option is the answer they name (synthetic.option_lookup)
    "qwen-base100-lookup": (
        "qwen2_5_vl",
        ["--spec", "rope_theta=100", "--word-fraction", "0.4", "--lookup-fraction", "0.2"],
    ),
    "qwen-base100-lookup-only": (
        "qwen2_5_vl",
        ["--spec", "rope_theta=100", "--word-fraction", "0", "--lookup-fraction", "1"],
    ),
    "qwen-base100-lookup-only-wide": (
        "qwen2_5_vl",
        ["--spec", "rope_theta=100", "text_hidden=256", "text_heads=4", "text_kv_heads=2", "text_intermediate=384"]
        + ["--word-fraction", "0", "--lookup-fraction", "1"],
    ),  # the full fixtures' language-model width, two layers
    "gemma3": ("gemma3", []),
    "llava": ("llava", []),
    # Gemma-3's decoder as the fixture option builds it (its window over the whole prompt; language_models.py ran it
    # with the SMALL spec's 32-token window)
    "llava-gemma3_text": ("llava", ["--spec", "decoder=gemma3_text"]),
    "llava-gemma3_text-several": ("llava", ["--spec", "decoder=gemma3_text"]),
    "gemma3-several": ("gemma3", []),
}
SEVERAL = replace(ONE_OBJECT, min_objects=2, max_objects=4)


def train(family: str, out: Path, steps: int, extra: list[str]) -> None:
    args = ["train", "--small", "--family", family, "--steps", str(steps), "--batch-size", "32", "--warmup", "30"]
    args += ["--image-levels", "0", "0", "--video-every", "0", "--caption-fraction", "0", "--word-fraction", "0.5"]
    args += ["--eval-every", "0", "--device", "cpu", "--lr", "3e-4", "--vision-lr", "3e-3", "--out", str(out)]
    assert loop.main(args + extra) == 0


def score(model_dir: Path, scenes: synthetic.ImageDifficulty, n: int = 256) -> str:
    model, processor = fixtures.load(model_dir)
    model.eval()
    rng = synthetic.split_rng(1, "image", "validation")
    rows = columns = letters = lookups = 0
    picked = collections.Counter()
    for _ in range(n // 64):
        batch = synthetic.image_batch(64, rng, scenes, split="validation", size=fixtures.image_side(processor))
        bare, chosen = (answers(model, processor, batch, mc) for mc in (False, True))
        named = replace(batch, questions=tuple(synthetic.option_lookup(q) for q in batch.questions))
        lookups += sum(a[:1] == q.answer for a, q in zip(answers(model, processor, named, True), batch.questions))
        for question, said, letter in zip(batch.questions, bare, chosen, strict=True):
            want, got = cell(question.answer_word), cell(said)
            rows += want[0] == got[0]
            columns += want[1] == got[1]
            letters += letter[:1] == question.answer
            picked[letter[:1]] += 1
    words = f"words: row {rows / n:.0%}, column {columns / n:.0%}"
    return f"{words}; letters {letters / n:.0%} (picked {dict(picked)}); asked by the answer {lookups / n:.0%}"


def main(out: Path, steps: int, runs: list[str]) -> None:
    curriculum = synthetic.IMAGE_CURRICULUM
    for name in runs:
        family, extra = RUNS[name]
        scenes = SEVERAL if name.endswith("-several") else ONE_OBJECT
        synthetic.IMAGE_CURRICULUM = (scenes, *curriculum[1:])
        train(family, out / name, steps, extra)
        print(f"{name}, {steps} steps: {score(out / name / 'model', scenes)}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] or list(RUNS))
