"""``vlmzip demo``: compress tiny random models and report what was kept (runs anywhere, on the CPU)."""

from __future__ import annotations

import torch

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model


def run_tiny(family: str, policy: str, new_tokens: int = 8) -> str:
    """Compress a tiny random ``family`` model with ``policy``, generate for a padded batch of two prompts
    (one and two images), and return a report: tokens generated and the stats of the compressed run."""
    model = tiny_model(family)
    inputs = random_inputs(model, [1, 2], text_lengths=[4, 9])
    reference = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    vlmzip.compress(model, policy)
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    stats = vlmzip.stats(model)
    vlmzip.restore(model)
    prompt = inputs["input_ids"].shape[1]
    agree = (out[:, prompt:] == reference[:, prompt:]).float().mean().item()
    return "\n".join(
        [
            f"== {family} ({type(model).__name__}) ==",
            f"generated {tuple(out[:, prompt:].shape)} tokens; {agree:.0%} equal to the uncompressed model",
            str(stats),
        ]
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    print(run_tiny("llava", "vtc-cls:keep=0.25"))
