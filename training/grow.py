"""Growing and narrowing a fixture that training continues (``--init`` with ``--spec``): deeper stacks whose new
layers start as the identity (``deepen``), narrower language-model MLPs that keep the neurons carrying the most
(``narrow``), and the checks that refuse a continuation which would not be the same fixture."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import torch
from transformers import PreTrainedModel

from vlmzip.eval.fixtures import FixtureSpec

__all__ = ["check_continuation", "check_growth", "deepen", "mlp_neuron_scores", "narrow"]

# Where a layer of any of the three families' stacks (CLIP and SigLIP towers, Qwen2.5-VL's vision blocks, the
# Llama, Qwen2 and Gemma-3 decoders) writes to its residual stream: zeroed, they make the layer the identity.
_RESIDUAL_WRITERS = ("self_attn.out_proj.", "mlp.fc2.", "attn.proj.", "self_attn.o_proj.", "mlp.down_proj.")
_LAYER_KEY = re.compile(r"^(.*\.(?:layers|blocks))\.(\d+)\.(.*)$")


def _stack_depths(keys) -> dict[str, int]:
    """Layers per stack (the prefix of ``...layers.N.`` / ``...blocks.N.`` keys)."""
    depths: dict[str, int] = {}
    for key in keys:
        if match := _LAYER_KEY.match(key):
            depths[match[1]] = max(depths.get(match[1], 0), int(match[2]) + 1)
    return depths


def check_growth(family: str, old: FixtureSpec, new: FixtureSpec) -> None:
    """Refuse to grow a fixture built from ``old`` into ``new`` where the deeper model would not compute what
    the fixture did (see ``deepen``)."""
    for name in ("vision_layers", "text_layers"):
        if getattr(new, name) < getattr(old, name):
            raise ValueError(
                f"{name}={getattr(new, name)} is fewer than the fixture's {getattr(old, name)}: a fixture can grow, "
                "not shrink"
            )
    added = new.vision_layers - old.vision_layers
    if family == "qwen2_5_vl" and added % 2:
        raise ValueError(
            f"vision_layers={new.vision_layers}: Qwen2.5-VL's vision blocks alternate windowed and full attention, "
            f"so its tower grows by an even number of layers ({old.vision_layers + 2}, {old.vision_layers + 4}, ...)"
        )
    read = old.feature_layer
    kept = -2 <= read < 0 or 0 < read < old.vision_layers  # the layers before the inserted ones, or the last
    if family == "llava" and added and new.feature_layer == read and not kept:
        raise ValueError(
            f"feature_layer={read} would read another layer of the grown tower (new layers go before the last); "
            f"grow a tower read at -1, -2 or 1..{old.vision_layers - 1}, or name the layer with --spec feature_layer"
        )


def deepen(state: dict[str, torch.Tensor], target: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A fixture's weights (``state``) laid out for ``target``, the same fixture with as many or more layers in
    each stack (``check_growth`` says which growths keep its function). Each stack's new layers go before its
    last one and start as the identity, their residual writers zeroed and their other weights as ``target``
    has them, so ``target`` computes what the fixture did and training goes on from there, not from scratch."""
    target_state = target.state_dict()
    old, new = _stack_depths(state), _stack_depths(target_state)
    if old.keys() != new.keys():
        raise ValueError(f"the fixture's layer stacks ({', '.join(old)}) are not {target.config.model_type}'s")
    grown = {}
    for key, value in target_state.items():
        source = key
        if match := _LAYER_KEY.match(key):
            stack, layer, rest = match[1], int(match[2]), match[3]
            if old[stack] - 1 <= layer < new[stack] - 1:  # an added layer (none when the depth is unchanged)
                grown[key] = torch.zeros_like(value) if rest.startswith(_RESIDUAL_WRITERS) else value.clone()
                continue
            if layer == new[stack] - 1:
                source = f"{stack}.{old[stack] - 1}.{rest}"
        if source not in state:
            raise ValueError(f"the fixture has no {source}: it is not {target.config.model_type} or has other sizes")
        grown[key] = state[source]
    return grown


_MLP_MODULE = re.compile(r"^(?:.*\.)?language_model\.layers\.\d+\.mlp$")


def mlp_neuron_scores(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each intermediate neuron of the language model's MLPs carries on ``inputs`` (a batch of the model's
    inputs): the mean magnitude of its activation over every position, times the norm of the ``down_proj``
    column through which it writes to the residual stream. Keyed by MLP module name (the state-dict prefix)."""
    mlps = {name: module for name, module in model.named_modules() if _MLP_MODULE.match(name)}
    means: dict[str, torch.Tensor] = {}  # per MLP: each neuron's mean activation magnitude

    def record(name: str):
        return lambda module, args: means.__setitem__(name, args[0].detach().abs().flatten(0, -2).float().mean(0))

    hooks = [mlp.down_proj.register_forward_pre_hook(record(name)) for name, mlp in mlps.items()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(**inputs)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return {name: (means[name] * mlp.down_proj.weight.detach().float().norm(dim=0)).cpu() for name, mlp in mlps.items()}


def narrow(state: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """``state`` with each scored MLP (``mlp_neuron_scores``) cut to its ``width`` highest-scoring neurons, in
    their order: rows of ``gate_proj`` and ``up_proj``, columns of ``down_proj``. Dropping a neuron that carries
    nothing leaves what the model computes as it was; dropping others changes it, so a run that narrows a fixture
    trains on from there."""
    narrowed = dict(state)
    for name, score in scores.items():
        if width > len(score):
            raise ValueError(f"{name} has {len(score)} neurons: it cannot narrow to {width}")
        keep = score.topk(width).indices.sort().values
        for part, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            key = f"{name}.{part}.weight"
            narrowed[key] = state[key].index_select(dim, keep)
    return narrowed


# What a continued fixture may change of the spec it was saved with: the fields that keep its weights' shapes,
# the depths it can grow to, and the width its language model's MLPs can narrow to (a smaller fixture to ship).
_CHANGEABLE = ("feature_layer", "rope_theta", "pooled_side", "sliding_window", "vision_window")
_GROWABLE = ("vision_layers", "text_layers")
_NARROWABLE = ("text_intermediate",)
# Every family reads image_size, but only Qwen2.5-VL's tower has no position table sized by it (its rotary
# positions follow the patch grid), so only a continued Qwen2.5-VL fixture may read larger images; CLIP's and
# SigLIP's learned positions fix theirs.
_CHANGEABLE_BY_FAMILY = {"qwen2_5_vl": ("image_size",)}


def check_continuation(family: str, saved: FixtureSpec, spec: FixtureSpec, directory: str | Path) -> None:
    """Refuse to continue the fixture in ``directory``, saved from ``saved``, as a run of ``spec`` that changes
    its architecture (sizes, decoder) or grows it in a way ``check_growth`` refuses."""
    changeable = _CHANGEABLE + _CHANGEABLE_BY_FAMILY.get(family, ())
    changed = [
        f"{f.name} {getattr(saved, f.name)} -> {getattr(spec, f.name)}"
        for f in fields(FixtureSpec)
        if f.name not in changeable + _GROWABLE + _NARROWABLE and getattr(saved, f.name) != getattr(spec, f.name)
    ]
    if changed:
        raise ValueError(
            f"--init {directory} cannot continue with {', '.join(changed)}: a continued fixture keeps its "
            f"architecture; it can change {', '.join(changeable)}, grow ({', '.join(_GROWABLE)}) and narrow "
            f"({', '.join(_NARROWABLE)})"
        )
    check_growth(family, saved, spec)
    if spec.text_intermediate > saved.text_intermediate:
        raise ValueError(
            f"text_intermediate={spec.text_intermediate} is more than the fixture's {saved.text_intermediate}: its "
            "MLPs can narrow (keeping the neurons that carry the most), not widen"
        )
