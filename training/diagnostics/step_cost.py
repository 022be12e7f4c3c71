"""What a change of spec costs a training step, counted on the CPU before spending GPU time on it.

For a shipped fixture and the same fixture with ``FIELD=N`` changes (as ``--spec`` takes them), builds both and
runs one forward and backward of a small training batch of each kind (images; for Qwen2.5-VL also videos) as
training does (its loss; Qwen's packed vision attention) under bf16 autocast, and prints:

- the aten operations dispatched: the fixtures' steps are launch-bound on an H200 (training/README.md), so
  their ratio predicts the ratio of step times;
- the bytes of the tensors the forward saves for the backward, per image or video frame: times a step's frames,
  the activation memory of a step (weights and optimizer state are a few MB).

    python -m training.diagnostics.step_cost NAME [FIELD=N ...]

e.g. ``llava vision_layers=6`` or ``qwen2_5_vl image_size=96``. Run from anywhere with vlmzip installed (~20 s).
"""

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training import data, loop
from training.inputs import QwenIndex
from vlmzip.eval import bundled, fixtures


class _Operations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def cost(family: str, spec: fixtures.FixtureSpec, step: int) -> tuple[str, int, int, int]:
    """(kind, frames, operations, saved bytes) of training step ``step``'s batch (batch 8 images or 4 clips)."""
    model, processor = fixtures.build(family, spec=spec)
    cfg = data.TrainConfig(family, steps=2, batch_size=8, video_batch_size=4, scene_size=64)
    batch = data.step_examples(processor, cfg, step)
    if family == "qwen2_5_vl":
        batch.update(QwenIndex(model.config)(processor, batch))
    cpu = torch.device("cpu")
    inputs = loop._on_device(processor, batch, cpu)
    storages: dict[int, int] = {}

    def save(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    operations = _Operations()
    # the training step's own forward (Qwen's packed vision attention) and loss
    with loop._packed_vision_attention(model), operations, torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(save, lambda tensor: tensor):
            loss, _ = loop._loss(model.train(), inputs, cpu)
        loss.backward()
    kind = "videos" if "videos" in batch else "images"
    frames = sum(len(clip) for clip in batch["videos"]) if kind == "videos" else len(batch["images"])
    return kind, frames, operations.count, sum(storages.values())


def main(name: str, changes: list[str]) -> None:
    saved = fixtures.saved_spec(bundled.model_path(name))
    changed = fixtures.spec_with(name, saved, changes)
    steps = (0, 1) if name == "qwen2_5_vl" else (0,)  # Qwen: every odd step is a video batch
    print("| spec | batch | operations | saved MiB a frame |\n|---|---|---:|---:|")
    for label, spec in (("shipped", saved), (" ".join(changes) or "shipped", changed)):
        for step in steps:
            kind, frames, operations, saved_bytes = cost(name, spec, step)
            print(f"| {label} | {kind} ({frames} frames) | {operations} | {saved_bytes / frames / 2**20:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
