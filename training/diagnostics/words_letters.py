"""Does a fixture know the answer but miss the option? (training/README.md, "What the rounds taught".)

Asks every image question family two ways on the same validation scenes of two to four objects: as the bare
question, answered in words (the word task of training), and with the official multiple-choice prompt,
answered with a letter, and asked by its own answer in that prompt ("Which option is red?", the lookup of
``synthetic.option_lookup``, which needs no image); prints the share right each way. A family far better in
words than in letters is one whose answer the model can say but not match against the options; the lookups say
whether it can match a word it is given. "exists" ("Which of these objects is in the image?") has several right
words, so only its letters and lookups are scored. Run from anywhere with vlmzip installed, on
the CPU (~1 minute a model for 128 questions a family):

    python -m training.diagnostics.words_letters [QUESTIONS] [MODEL ...]

where MODEL is a bundled name (default: all three) or a trained model's directory.
"""

import sys
from dataclasses import replace

import torch

from vlmzip.eval import bundled, fixtures, synthetic

SCENES = dict(min_objects=2, max_objects=4)  # the shipped test set's level


def answers(model, processor, batch: synthetic.ImageBatch, multiple_choice: bool) -> list[str]:
    """Greedy answers to ``batch``'s questions, bare or in the multiple-choice prompt."""
    prompts = [synthetic.mc_prompt(q) if multiple_choice else q.text for q in batch.questions]
    inputs = fixtures.encode(processor, [fixtures.chat_prompt(processor, p, "image") for p in prompts], batch.images)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [a.strip() for a in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _letters_right(picked: list[str], batch: synthetic.ImageBatch) -> float:
    return sum(a[:1] == q.answer for a, q in zip(picked, batch.questions, strict=True)) / len(picked)


def main(n: int, names: list[str]) -> None:
    print("| family | " + " | ".join(f"{name} words | letters | lookups" for name in names) + " |")
    print("|---|" + "---:|---:|---:|" * len(names))
    loaded = [fixtures.load(bundled.resolve(name)) for name in names]
    for family in synthetic.IMAGE_FAMILIES:
        row = []
        for model, processor in loaded:
            rng = synthetic.split_rng(2, "image", "validation")
            level = synthetic.ImageDifficulty(families=(family,), **SCENES)
            batch = synthetic.image_batch(n, rng, level, split="validation", size=fixtures.image_side(processor))
            lookups = replace(batch, questions=tuple(synthetic.option_lookup(q) for q in batch.questions))
            said = answers(model.eval(), processor, batch, multiple_choice=False)
            words = sum(a == q.answer_word for a, q in zip(said, batch.questions, strict=True)) / n
            letters = _letters_right(answers(model, processor, batch, multiple_choice=True), batch)
            looked_up = _letters_right(answers(model, processor, lookups, multiple_choice=True), lookups)
            row += ["-" if family == "exists" else f"{words:.0%}", f"{letters:.0%}", f"{looked_up:.0%}"]
        print(f"| {family} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 128, sys.argv[2:] or list(bundled.MODELS))
