"""Linear probes of the shipped fixtures' visual tokens (training/README.md, "What the rounds taught").

For scenes of two to four objects, takes the visual tokens the language model receives (after the projector,
merger or pooling) and fits a multinomial logistic regression on two thirds of the objects, scoring the rest:
can an object's shape be read from the token at its centre, from the 3 x 3 tokens around it, and can its colour
and its cell be read from the centre token? Run from anywhere with vlmzip installed, on the CPU (~4 minutes):

    python -m training.diagnostics.probe [SCENES] [MODEL ...]

where MODEL is a bundled name (default: all three) or a trained model's directory.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from vlmzip.eval import bundled, fixtures, processing
from vlmzip.eval import synthetic as syn


def token_features(name: str, images: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """``[N, tokens, hidden]``: what the language model of fixture ``name`` (or of the model at that path)
    receives for each image."""
    model, processor = fixtures.load(bundled.resolve(name))
    out = []
    with torch.no_grad():
        for part in images.split(chunk):
            inputs = processor.image_processor(images=processing._pil(part), return_tensors="pt")
            extra = {"image_grid_thw": inputs["image_grid_thw"]} if "image_grid_thw" in inputs else {}
            feats = model.eval().get_image_features(inputs["pixel_values"], **extra).pooler_output
            feats = torch.cat(list(feats)) if isinstance(feats, (tuple, list)) else feats
            out.append(feats.reshape(len(part), -1, feats.shape[-1]).float())
    return torch.cat(out)


def probe(x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy of a linear classifier fitted to the first two thirds (standardised, L2 1e-3)."""
    cut = 2 * len(y) // 3
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-5)
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(x[:cut] @ w + b, y[:cut]) + 1e-3 * w.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        return ((x[cut:] @ w + b).argmax(1) == y[cut:]).float().mean().item()


def main(n: int, names: list[str]) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(123)
    scenes = [syn.sample_scene(rng, syn.ImageDifficulty(min_objects=2, max_objects=4)) for _ in range(n)]
    images = syn.render(scenes, 64)
    objs = [(i, o) for i, s in enumerate(scenes) for o in s.objects]
    shape = torch.tensor([syn.SHAPES.index(o.shape) for _, o in objs])
    colour = torch.tensor([syn.COLOUR_NAMES.index(o.colour) for _, o in objs])
    cell = torch.tensor([o.cell[0] * 3 + o.cell[1] for _, o in objs])
    board = 3 * syn.SUB  # position units across the 64-pixel image
    for name in names:
        tokens = token_features(name, images)
        side = int(tokens.shape[1] ** 0.5)
        grid = tokens.reshape(n, side, side, -1)
        at = [(i, min(side - 1, o.y * side // board), min(side - 1, o.x * side // board)) for i, o in objs]
        centre = torch.stack([grid[i, r, c] for i, r, c in at])
        padded = F.pad(grid.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
        around = torch.stack([padded[i, r : r + 3, c : c + 3].reshape(-1) for i, r, c in at])
        got = {
            "shape (centre)": probe(centre, shape),
            "shape (3x3)": probe(around, shape),
            "colour (centre)": probe(centre, colour),
            "cell (centre)": probe(centre, cell),
        }
        print(f"{name} ({side}x{side} tokens): " + ", ".join(f"{k} {v:.0%}" for k, v in got.items()), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1500, sys.argv[2:] or list(bundled.MODELS))
