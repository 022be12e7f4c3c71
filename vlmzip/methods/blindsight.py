"""BlindSight: per-head attention templates for multi-image prompts, from a calibration file."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.blindsight import TEMPLATES, load_calibration, template_blocks
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.sparse import Layout
from vlmzip.stages import ModelInfo, PromptLayer, SparseAttention


@register_method
@dataclass(frozen=True)
class BlindSight(SparseAttention):
    """ "BlindSight: Harnessing Sparsity for Efficient Vision-Language Models" (Srikrishnan et al., 2025).

    Every query head of every layer follows the template a calibration run gave it (``vlmzip.blindsight``): sink
    only, intra-image (its own image's blocks: no cross-image attention), intra-image plus each image's first block,
    or dense; the instruction after the last image always sees everything. The masks come from the prompt's layout
    alone (no estimation at run time). ``calibration`` is the file ``vlmzip.calibrate_blindsight(model, prompts,
    path)`` wrote for this model. Published: categories from a calibration dataset, 32-41% fewer attention FLOPs.
    """

    name = "blindsight"
    paper = "arXiv:2507.09071"
    title = "BlindSight: Harnessing Sparsity for Efficient Vision-Language Models"
    deviation = (
        "templates at block granularity; a head's template is the sparsest keeping `recall` (0.9) of its calibration "
        "attention; a video is one document (its frames are not separated)"
    )
    calibration: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.calibration:
            raise PolicyError(
                "blindsight: calibration=PATH is required (a file from vlmzip.calibrate_blindsight(model, prompts, "
                "path))"
            )
        load_calibration(self.calibration)

    def check_model(self, info: ModelInfo) -> None:
        load_calibration(self.calibration).check(info, self.calibration)

    def choose(
        self,
        layer: PromptLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        layout: Layout,
        candidates: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        names = load_calibration(self.calibration).templates[layer.index]
        which = torch.tensor([TEMPLATES.index(name) for name in names], device=query.device)
        masks = template_blocks(layout.rows_first(layer.items, dim=1), layout.lengths, self.block)
        return masks[:, which]
