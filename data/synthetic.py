"""``synthetic``: procedural shapes on textured, noisy backgrounds, with ground-truth object masks.

Ten classes, one shape each, drawn at a random position and scale (half-size 5 to 10 pixels at
32x32) in a random colour that contrasts with the background. Backgrounds are a random base colour
plus an oriented sine grating and pixel noise; half of the images also carry a small distractor
blob that belongs to no class and lies outside the mask. Everything is generated from one seed
with torch's generator, so the data is identical on every machine and needs no files.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch

from interpbench.data import DATASETS
from interpbench.data.base import Dataset, cached_dataset, channel_stats

CLASSES: List[str] = [
    "disk", "ring", "square", "frame", "triangle", "plus", "cross", "stripes", "diamond", "crescent",
]


def _shape_masks(u: torch.Tensor, v: torch.Tensor) -> List[torch.Tensor]:
    """Boolean masks of the ten shapes for offsets ``u, v`` in units of the half-size (y down)."""
    radius = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    return [
        radius <= 1.0,  # disk
        (radius <= 1.0) & (radius >= 0.55),  # ring
        box <= 0.85,  # square
        (box <= 0.9) & (box >= 0.5),  # frame
        (v <= 0.8) & (u.abs() <= (v + 0.95) * 0.55),  # triangle, apex up
        ((u.abs() <= 0.28) & (v.abs() <= 0.95)) | ((v.abs() <= 0.28) & (u.abs() <= 0.95)),  # plus
        (((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4)) & (box <= 0.85),  # cross
        (box <= 0.9) & (torch.floor((v + 0.9) / 0.36).remainder(2) == 0),  # stripes
        u.abs() + v.abs() <= 1.0,  # diamond
        (radius <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.65**2),  # crescent
    ]


def generate(
    num_images: int, image_size: int = 32, seed: int = 0, noise: float = 0.05
) -> Dict[str, torch.Tensor]:
    """Generate ``num_images`` images with balanced labels.

    Returns ``images`` uint8 ``[N, 3, S, S]``, ``labels`` int64 ``[N]``, ``masks`` bool ``[N, S, S]``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen)

    n, size = num_images, image_size
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=gen)]
    half = uniform(5.0, 10.0, n) * size / 32.0
    cx = half + torch.rand(n, generator=gen) * (size - 2 * half)
    cy = half + torch.rand(n, generator=gen) * (size - 2 * half)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = coords.view(1, size, 1), coords.view(1, 1, size)
    u = (xs - cx.view(n, 1, 1)) / half.view(n, 1, 1)
    v = (ys - cy.view(n, 1, 1)) / half.view(n, 1, 1)
    all_masks = torch.stack(_shape_masks(u, v))  # [10, N, S, S]
    masks = all_masks[labels, torch.arange(n)]

    # Background: base colour, an oriented sine grating, and pixel noise.
    base = uniform(0.3, 0.7, n, 3, 1, 1)
    freq = uniform(0.05, 0.25, n, 1, 1)
    angle = uniform(0.0, math.pi, n, 1, 1)
    phase = uniform(0.0, 2 * math.pi, n, 1, 1)
    grating = torch.sin(2 * math.pi * freq * (xs * torch.cos(angle) + ys * torch.sin(angle)) + phase)
    background = base + 0.12 * grating.unsqueeze(1)

    # Object colour: the base colour shifted by 0.3 to 0.6 per channel, one sign per image.
    sign = torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.5, -1.0, 1.0)
    colour = (base + sign * uniform(0.3, 0.6, n, 3, 1, 1)).clamp(0.0, 1.0)
    images = torch.where(masks.unsqueeze(1), colour, background)

    # A distractor blob (radius 1.5 to 3 px) in half of the images, never over the object.
    has_blob = torch.rand(n, 1, 1, generator=gen) < 0.5
    bx, by = uniform(3.0, size - 3.0, n, 1, 1), uniform(3.0, size - 3.0, n, 1, 1)
    blob_radius = uniform(1.5, 3.0, n, 1, 1) * size / 32.0
    blob = has_blob & (((xs - bx) ** 2 + (ys - by) ** 2) <= blob_radius**2) & ~masks
    blob_colour = torch.rand(n, 3, 1, 1, generator=gen)
    images = torch.where(blob.unsqueeze(1), blob_colour, images)

    images = images + noise * torch.randn(images.shape, generator=gen)
    images = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return {"images": images, "labels": labels, "masks": masks}


@DATASETS.register("synthetic", masks=True)
def synthetic(
    num_train: int = 5000, num_test: int = 1000, image_size: int = 32, seed: int = 0
) -> Dataset:
    """The offline default: ``num_train + num_test`` generated images of 10 shape classes."""
    key = {"num_train": num_train, "num_test": num_test, "image_size": image_size, "seed": seed,
           "version": 1}

    def build() -> Dict[str, object]:
        data = generate(num_train + num_test, image_size=image_size, seed=seed)
        mean, std = channel_stats(data["images"][:num_train])
        train, test = slice(0, num_train), slice(num_train, None)
        return {
            "train_images": data["images"][train].numpy(),
            "train_labels": data["labels"][train].numpy(),
            "train_masks": data["masks"][train].numpy(),
            "test_images": data["images"][test].numpy(),
            "test_labels": data["labels"][test].numpy(),
            "test_masks": data["masks"][test].numpy(),
            "classes": CLASSES,
            "mean": mean,
            "std": std,
        }

    dataset = cached_dataset("synthetic", key, build)
    dataset.augment = "none"  # position and scale are already random; crops would cut objects
    return dataset
