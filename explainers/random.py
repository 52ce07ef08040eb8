"""``random``: uniform noise, the baseline the FA-CNN paper calls RAND (seeded per image)."""
from __future__ import annotations

import hashlib
from typing import List

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel

PERSON = b"random-map"  # keeps these seeds apart from other hashes of the same images (the metrics' ties)


def noise_seeds(x: torch.Tensor, seed: int) -> List[int]:
    """One 63-bit seed per image of ``x [B, ...]``: a BLAKE2b hash of its values as float32, keyed
    by ``seed``."""
    flat = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float32).contiguous().numpy()
    key = int(seed).to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=key, person=PERSON).digest(),
                           "little") >> 1 for row in flat]


@EXPLAINERS.register("random")
class Random(Explainer):
    """Independent U(0, 1) per pixel, from a generator seeded by ``seed`` and a hash of the image
    itself (:func:`noise_seeds`). An image gets the same map in any batch, at any position in it and
    in any run: evaluations that resume part-way or pick another batch size give the same maps.
    The map does not depend on the model, so explaining a changed model again (model
    randomisation) gives the same map, as for any explanation that ignores the model."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"random seed must be an integer, got {seed!r}")
        self.seed = seed

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        maps = [torch.rand(h, w, generator=torch.Generator().manual_seed(s)) for s in noise_seeds(x, self.seed)]
        out = torch.stack(maps) if maps else torch.zeros(0, h, w)
        return out.to(x.device)
