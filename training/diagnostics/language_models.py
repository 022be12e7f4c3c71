"""Is the picking gap in the language model? (training/README.md, "What the rounds taught".)

``options.py``'s experiment (SMALL spec, one object, "Where is the <object>?", half words and half letters) on
LLaVA with another language model in place of its Llama, and with the embedding scale switched:

    python -m training.diagnostics.language_models OUT_DIR STEPS RUN  # one of RUNS: llava-gemma3_text, llava-qwen3, ...

A diagnostic, as it ran: it swaps the language model by wrapping the LLaVA fixture family's ``config`` and the
``build`` and ``load`` that the trainer and ``options.py`` call, in this process only (the saved models need the
same wrapping to be scored), with Gemma-3's decoder at the SMALL spec's 32-token window. The fixture option that
came of it, ``--spec decoder=gemma3_text``, gives the decoder a window over the whole prompt instead. ~0.11-0.13 s
a step on 2 CPU cores; run one at a time.
"""

import math
import sys
from pathlib import Path

from training import loop
from training.diagnostics import options
from vlmzip.eval import fixtures
from vlmzip.eval.families import fixture_family, gemma3
from vlmzip.eval.families.base import fixture_text_kwargs

# name: (language model, embedding scale: "model" as the model has it, "sqrt" x sqrt(width), "none" x 1)
RUNS = {
    "llava-gemma3_text": ("gemma3_text", "model"),  # Gemma-3's decoder: scales its embeddings by sqrt(width)
    "llava-gemma3_text-noscale": ("gemma3_text", "none"),
    "llava-qwen3": ("qwen3", "model"),  # Llama's decoder with normalised queries and keys
    "llava-llama-scaled": ("llama", "sqrt"),
}


def text_config(model_type: str, spec: fixtures.FixtureSpec, vocab_size: int, ids: dict[str, int]) -> dict:
    text = fixture_text_kwargs(spec, vocab_size, ids)
    if model_type == "gemma3_text":  # as it ran: the SMALL spec's window, not --spec decoder=gemma3_text's
        return gemma3.fixture_text(spec, text, spec.sliding_window)
    return {"model_type": model_type, **text, "head_dim": spec.head_dim}


def swap(model_type: str, scale: str) -> None:
    llava_fixture = fixture_family("llava")
    config_of, build, load = llava_fixture.config, fixtures.build, fixtures.load

    def config(spec, vocab_size, ids):
        llava = config_of(spec, vocab_size, ids).to_dict()
        llava["text_config"] = text_config(model_type, spec, vocab_size, ids)
        return type(config_of(spec, vocab_size, ids))(**{k: v for k, v in llava.items() if k != "model_type"})

    def adjust(model):
        embed = model.model.language_model.embed_tokens
        if scale == "none":
            embed.embed_scale.fill_(1.0)
        elif scale == "sqrt":
            width = math.sqrt(model.config.text_config.hidden_size)
            embed.register_forward_hook(lambda module, args, out: out * width)
        return model

    if model_type != "llama":
        llava_fixture.config = config  # this instance's method, for this process
    adjusted_build = lambda *a, **k: (lambda m, p: (adjust(m), p))(*build(*a, **k))  # noqa: E731
    adjusted_load = lambda *a, **k: (lambda m, p: (adjust(m), p))(*load(*a, **k))  # noqa: E731
    fixtures.build = loop.build = adjusted_build  # the trainer builds and continues through its own names
    fixtures.load = loop.load = adjusted_load


def main(out: Path, steps: int, name: str) -> None:
    swap(*RUNS[name])  # for good: one run per process
    options.RUNS[name] = ("llava", [])
    options.main(out, steps, [name])


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
