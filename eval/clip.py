"""What a relevance method with ``clip=DIR`` needs beside a random model (tests, ``vlmzip bench``): a tokenizer
saved with the model, and an OpenCLIP model with random weights saved in open_clip's local-directory layout.

Methods that read the question's text (``text-relevance`` and ``cdpruner`` with ``clip=``) decode it with the
tokenizer saved beside the model's checkpoint; a model built from a config has none, so ``with_word_tokenizer``
gives it a word-level one of its vocabulary (id ``i`` is the word ``w{i}``), as ``from_pretrained`` from a directory
would. ``save_random_clip`` writes ``open_clip_config.json`` and random weights for any open_clip config (a
built-in name such as ``"ViT-L-14-336"`` or a config dict): speed does not depend on the weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

__all__ = ["save_random_clip", "with_word_tokenizer"]


def with_word_tokenizer(model: nn.Module, directory: str | Path | None = None) -> nn.Module:
    """``model`` with a word-level tokenizer of its vocabulary saved in ``directory`` (default: a temporary directory
    removed with the model) and ``model.name_or_path`` pointing there."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="vlmzip-tokenizer-")
        weakref.finalize(model, shutil.rmtree, directory, ignore_errors=True)
    vocab = {f"w{i}": i for i in range(model.config.get_text_config().vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core).save_pretrained(str(directory))
    model.name_or_path = str(directory)
    return model


def save_random_clip(
    directory: str | Path, config: str | dict[str, Any], preprocess: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    """An OpenCLIP model of ``config`` (an open_clip built-in name, or a ``model_cfg`` dict) with random weights,
    saved in ``directory`` as ``clip=DIR`` loads it; the global torch RNG is left untouched. Needs open_clip."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(config) if isinstance(config, str) else config
    if model_cfg is None:
        raise ValueError(f"open_clip has no built-in config {config!r}; known: {', '.join(open_clip.list_models())}")
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess or {}}, indent=1)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory
