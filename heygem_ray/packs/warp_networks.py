"""The ``warp`` pack's networks (``models/warp.py``): no weights to load."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from heygem_ray.models.warp import WarpMotion, WarpRender


def load_stages(checkpoint: Path | None) -> dict[str, nn.Module]:
    return {"motion": WarpMotion().eval(), "render": WarpRender().eval()}
