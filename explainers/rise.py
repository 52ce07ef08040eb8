"""``rise``: RISE, Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018).

``N`` binary grids of ``s x s`` cells, each cell on with probability ``p``, are upsampled
bilinearly to ``(s + 1) * cell`` pixels (``cell = ceil(H / s)``) and cropped to ``H x W`` at a
random shift of ``0 .. cell - 1`` pixels in each direction, giving smooth masks ``M_i`` in
``[0, 1]``. The saliency of class ``c`` is the Monte Carlo estimate

    S_c = sum_i P_c(I_i) M_i / (N p)

with ``P`` the model's own probabilities (softmax; FA-CNN's L1 normalisation) and ``I_i`` the
image masked by ``M_i``. The upsampling is the reference code's (skimage ``resize``, order 1,
``mode="reflect"``, no anti-aliasing: half-pixel centres, mirrored borders), written as two small
interpolation matrices so the masks are built in torch, in batches, from the seeded grids and
shifts alone.

Where the mask applies (``space``):

- ``"normalised"`` (default, the reference code's): the reference multiplies the *normalised*
  image by the masks, so a masked pixel is 0 after normalisation, i.e. the dataset mean. Our
  models take pixel-space images and normalise them themselves (``(x - mean) / std`` with the
  model's ``mean`` and ``std``), so the masked image is written in pixel space as
  ``I_i = mean + (x - mean) * M_i``: normalised by the model, it is ``normalise(x) * M_i``, the
  reference's input (to float rounding, a few 1e-7 in normalised units). For the
  dynamic-linear models (B-cos, CoDA-Net), whose input encoding is ``[x, 1 - x]`` rather than a
  normalisation, the masked pixels take the same dataset mean (``mean`` of the model's config).
- ``"pixel"``: ``I_i = x * M_i``, masked pixels black (pixel value 0), as this module did before.

Defaults: the paper's ``N = 4000``, ``s = 7``, ``p = 0.5`` for inputs of 112 pixels or more. For
smaller inputs (CIFAR-sized, 32 pixels) ``N = 1000`` and ``s = 4``: seven cells of under five
pixels would be finer than the models' last feature maps (4 x 4 at 32 pixels, as 7 x 7 at 224
pixels for the ImageNet ResNets the paper explains), and with 16 cells instead of 49 a quarter of
the masks keeps a similar number of masks per cell (62 against 82) at a quarter of the cost.
The masks are drawn from torch's seeded generator (``seed``), not numpy's global one as in the
reference; the estimator does not depend on which random masks are drawn beyond its Monte Carlo
error.

One set of masks (seed ``seed``) serves every image and every batch, so explaining in batches
equals explaining at once. Cost: ``N`` forward passes per image, stacked over images and masks
into forward batches of about ``batch_size`` images; they give every class's probability, so
``class_maps`` explains all classes for the price of one. Captum has no RISE; it is written here.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel

PAPER = (4000, 7)  # N, s at 224 pixels
SMALL = (1000, 4)  # N, s below 112 pixels
SMALL_BELOW = 112
SPACES = ("normalised", "pixel")  # where the masks apply: the normalised image (reference), pixel space


def interpolation_matrix(cells: int, size: int) -> torch.Tensor:
    """``[size, cells]``: linear interpolation from ``cells`` samples to ``size`` with half-pixel
    centres and mirrored borders (``... c1 | c0 c1 c2 ... | c(n-2) ...``), as skimage's resize."""
    position = (torch.arange(size, dtype=torch.float64) + 0.5) * cells / size - 0.5
    low = torch.floor(position)
    frac = position - low
    low = low.long()

    def mirror(index: torch.Tensor) -> torch.Tensor:
        index = index.abs()
        return torch.where(index > cells - 1, 2 * (cells - 1) - index, index)

    rows = torch.arange(size)
    matrix = torch.zeros(size, cells, dtype=torch.float64)
    matrix.index_put_((rows, mirror(low)), 1 - frac, accumulate=True)
    matrix.index_put_((rows, mirror(low + 1)), frac, accumulate=True)
    return matrix


@EXPLAINERS.register("rise")
class RISE(Explainer):
    name = "rise"

    def __init__(self, num_masks: Optional[int] = None, grid_size: Optional[int] = None, p: float = 0.5,
                 seed: int = 0, batch_size: int = 512, space: str = "normalised") -> None:
        if num_masks is not None and (not isinstance(num_masks, int) or num_masks < 1):
            raise ValueError(f"rise num_masks must be a positive integer or None (size-dependent), got {num_masks!r}")
        if grid_size is not None and (not isinstance(grid_size, int) or grid_size < 2):
            raise ValueError(f"rise grid_size must be an integer >= 2 or None (size-dependent), got {grid_size!r}")
        if not 0 < p < 1:
            raise ValueError(f"rise p must be in (0, 1), got {p}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"rise batch_size must be a positive integer, got {batch_size!r}")
        if space not in SPACES:
            raise ValueError(f"unknown rise space {space!r}; valid spaces: {', '.join(SPACES)}")
        self.num_masks, self.grid_size, self.p = num_masks, grid_size, float(p)
        self.seed, self.batch_size, self.space = seed, batch_size, space
        self._parts: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def settings(self, height: int, width: int) -> Tuple[int, int]:
        """``(N, s)`` for an ``height x width`` input: the given values, else the size's defaults."""
        n, s = PAPER if min(height, width) >= SMALL_BELOW else SMALL
        return self.num_masks or n, self.grid_size or s

    def grids_and_shifts(self, height: int, width: int):
        """``(grid [N, s, s], shift_h [N], shift_w [N])`` on the CPU, drawn from ``seed``: the on/off
        cells and each mask's crop offset in its ``(s + 1) * cell`` upsampled grid."""
        n, s = self.settings(height, width)
        generator = torch.Generator().manual_seed(self.seed)
        grid = (torch.rand(n, s, s, generator=generator) < self.p).double()
        shift_h = torch.randint(0, math.ceil(height / s), (n,), generator=generator)
        shift_w = torch.randint(0, math.ceil(width / s), (n,), generator=generator)
        return grid, shift_h, shift_w

    def mask_parts(self, height: int, width: int, device=None):
        """``(grid [N, s, s], rows [N, H, s], cols [N, W, s])``: mask ``i`` is
        ``rows[i] @ grid[i] @ cols[i].T`` (the shifted rows and columns of the interpolation)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (height, width, str(device))
        if key not in self._parts:
            grid, shift_h, shift_w = self.grids_and_shifts(height, width)
            s = grid.shape[-1]
            cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
            rows = interpolation_matrix(s, (s + 1) * cell_h)[shift_h[:, None] + torch.arange(height)]
            cols = interpolation_matrix(s, (s + 1) * cell_w)[shift_w[:, None] + torch.arange(width)]
            self._parts[key] = tuple(t.float().to(device) for t in (grid, rows, cols))
        return self._parts[key]

    def masks(self, height: int, width: int, device=None, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Masks ``start .. stop - 1`` (default: all) ``[n, H, W]`` in ``[0, 1]``."""
        grid, rows, cols = self.mask_parts(height, width, device)
        grid, rows, cols = grid[start:stop], rows[start:stop], cols[start:stop]
        return torch.bmm(torch.bmm(rows, grid), cols.transpose(1, 2))

    def masked_images(self, model: ZooModel, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``[B * m, 3, H, W]``: each image ``x [B, 3, H, W]`` under each mask ``masks [m, H, W]``
        (image-major), in pixel space: ``mean + (x - mean) * M`` (``space="normalised"``: the model
        sees ``normalise(x) * M``) or ``x * M`` (``space="pixel"``)."""
        weights = masks[None, :, None]  # [1, m, 1, H, W]
        if self.space == "pixel":
            return (x.unsqueeze(1) * weights).flatten(0, 1)
        mean = model.mean.to(x).unsqueeze(1)  # [1, 1, 3, 1, 1]
        return (mean + (x.unsqueeze(1) - mean) * weights).flatten(0, 1)

    @torch.no_grad()
    def _saliency(self, model: ZooModel, x: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        b, _, h, w = x.shape
        n, _ = self.settings(h, w)
        per_pass = max(1, self.batch_size // b)  # masks per forward batch
        total = None
        for start in range(0, n, per_pass):
            masks = self.masks(h, w, x.device, start, start + per_pass).to(x.dtype)  # [m, H, W]
            m = masks.shape[0]
            images = self.masked_images(model, x, masks)  # [B * m, 3, H, W]
            probs = model.probabilities(model(images)).view(b, m, -1)
            if target is not None:
                index = target.to(device=x.device, dtype=torch.long).view(b, 1, 1).expand(b, m, 1)
                probs = probs.gather(2, index)
            part = probs.transpose(1, 2) @ masks.view(m, h * w)  # [B, K or 1, H*W]
            total = part if total is None else total + part
        return (total / (n * self.p)).view(b, -1, h, w)

    def class_maps(self, model: ZooModel, x: torch.Tensor) -> torch.Tensor:
        """Every class's RISE map ``[B, K, H, W]`` from one set of ``N`` masked passes per image."""
        return self._saliency(model, x, None)

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._saliency(model, x, target)[:, 0]
