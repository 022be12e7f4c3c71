"""Shared fixtures: tiny random models of every family that has an adapter, built offline on the CPU."""

from __future__ import annotations

import os

# Triton reads TRITON_INTERPRET whenever @triton.jit decorates, its own standard library included (tl.cdiv, tl.max:
# decorated when triton.language is first imported, which importing vlmzip's dependencies already does). Set here,
# before any import, the kernel tests (tests/test_kernels.py) run Triton's interpreter on CPU tensors; nothing else
# in the suite launches Triton.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from vlmzip.eval import fixtures, synthetic  # noqa: E402
from vlmzip.eval.tiny import FAMILIES, random_inputs, tiny_model  # noqa: E402

BACKENDS = ("sdpa", "eager")
FIXTURE_FAMILIES = fixtures.FAMILIES  # not named ``family``: that name is parametrised over tiny.FAMILIES


def pytest_generate_tests(metafunc):
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", FAMILIES)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)


@pytest.fixture
def model(family, backend):
    return tiny_model(family, attn_implementation=backend)


@pytest.fixture
def batch(model):
    return batch_of_two(model)


def batch_of_two(model) -> dict:
    """Two prompts of different lengths and image counts, left-padded."""
    return random_inputs(model, [1, 2], text_lengths=[3, 7])


def greedy(model, inputs, new_tokens: int = 5):
    return model.generate(
        **inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
    )


def full_attention_layers(model) -> list[int]:
    """The decoder layers whose cache a decode method compresses (sliding-window layers are left alone)."""
    config = model.config.get_text_config()
    types = getattr(config, "layer_types", None)
    return [i for i in range(config.num_hidden_layers) if not types or types[i] != "sliding_attention"]


def max_logit_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits, strict=True))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="module", params=FIXTURE_FAMILIES)
def built(request):
    """A freshly built (untrained) fidelity fixture of each family: ``(family, model, processor)``."""
    model, processor = fixtures.build(request.param)
    return request.param, model, processor


def image_inputs(processor, n: int = 2, seed: int = 0, mc: bool = True):
    """A fixture's processor inputs for ``n`` synthetic validation images and their questions."""
    batch = synthetic.image_batch(n, seed, synthetic.IMAGE_CURRICULUM[-1], split="validation")
    texts = [fixtures.chat_prompt(processor, synthetic.mc_prompt(q) if mc else q.text) for q in batch.questions]
    return fixtures.encode(processor, texts, batch.images)
