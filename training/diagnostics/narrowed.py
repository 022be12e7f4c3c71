"""What narrowing a shipped fixture's language-model MLPs costs before any training (training/README.md, "Next").

Writes the shipped fixture NAME with its MLPs cut to WIDTH neurons, chosen as a training run that narrows it
chooses them (``--init`` with ``--spec text_intermediate=WIDTH``: scored on the run's first batch), here at batch
128 on the CPU, to OUT_DIR; score it with ``vlmzip eval --bench images --model OUT_DIR``.

    python -m training.diagnostics.narrowed NAME WIDTH OUT_DIR
"""

import sys
from pathlib import Path

import torch

from training import data, loop
from vlmzip.eval import bundled, fixtures


def main(name: str, width: int, out: Path) -> None:
    init = str(bundled.model_path(name))
    cfg = data.TrainConfig(name, 1, 128, 1e-3, init=init)
    spec = fixtures.spec_with(name, fixtures.saved_spec(init), [f"text_intermediate={width}"])
    model, processor = fixtures.build(name, spec=spec)
    model.load_state_dict(loop._init_state(cfg, model, torch.device("cpu")))
    fixtures.save(model, processor, out, spec)
    print(f"{name}: {fixtures.param_count(model) / 1e6:.2f} M parameters, written to {out}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
