"""Can a fixture learn where an object is? (training/README.md, "What the rounds taught": Qwen2.5-VL's M-RoPE.)

Trains SMALL fixtures (32 x 32 images, 4 x 4 visual tokens) on one question only, "Where is the <object>?" about
scenes of one object, answered in words (9 cells), then scores 512 validation questions for the row and the
column separately: Qwen2.5-VL at several M-RoPE bases (``--spec rope_theta``), and Gemma-3 (1D RoPE over its
image block) as the reference. 2,000 steps of batch 32 each, ~2.5 minutes a run on 2 CPU cores:

    python -m training.diagnostics.positions OUT_DIR [THETA ...]      # default thetas: 10000 (the shipped) 100 10

Training's data-loader runs in this process (no --workers), so replacing the curriculum's first level here is
how the run sees only this question; it is an experiment, not a training option.
"""

import sys
from pathlib import Path

from training import loop
from training.diagnostics.words_letters import answers
from vlmzip.eval import fixtures, synthetic

ONE_OBJECT = synthetic.ImageDifficulty(1, 1, ("position_of",))


def train(family: str, out: Path, theta: str = "") -> None:
    args = ["train", "--small", "--family", family, "--steps", "2000", "--batch-size", "32", "--warmup", "30"]
    args += ["--image-levels", "0", "0", "--video-every", "0", "--caption-fraction", "0", "--word-fraction", "1"]
    args += ["--eval-every", "0", "--device", "cpu", "--lr", "3e-4", "--vision-lr", "3e-3", "--out", str(out)]
    if theta:
        args += ["--spec", f"rope_theta={theta}"]
    assert loop.main(args) == 0


def cell(words: str) -> tuple[str, str]:
    """(row, column) of a position answer; "center" is the middle of both."""
    parts = words.split()
    if parts == ["center"]:
        return "middle", "middle"
    row, column = (parts + ["?", "?"])[:2]  # a malformed answer scores as neither
    return row, column


def score(model_dir: Path, n: int = 512) -> tuple[float, float]:
    """Greedy word answers to ``n`` validation questions: the fraction with the right row, and the right column."""
    model, processor = fixtures.load(model_dir)
    model.eval()
    rng = synthetic.split_rng(1, "image", "validation")
    rows = columns = 0
    for _ in range(n // 64):
        batch = synthetic.image_batch(64, rng, ONE_OBJECT, split="validation", size=fixtures.image_side(processor))
        said = answers(model, processor, batch, multiple_choice=False)
        for question, answer in zip(batch.questions, said, strict=True):
            want, got = cell(question.answer_word), cell(answer)
            rows += want[0] == got[0]
            columns += want[1] == got[1]
    return rows / n, columns / n


def main(out: Path, thetas: list[str]) -> None:
    synthetic.IMAGE_CURRICULUM = (ONE_OBJECT, *synthetic.IMAGE_CURRICULUM[1:])
    runs = [(f"qwen2_5_vl, rope_theta={t}", "qwen2_5_vl", t) for t in thetas] + [("gemma3", "gemma3", "")]
    for name, family, theta in runs:
        run = out / name.replace(", ", "-")
        train(family, run, theta)
        row, column = score(run / "model")
        print(f"{name}: row {row:.0%}, column {column:.0%}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["10000", "100", "10"])
