"""``region_perturbation``: Quantus's RegionPerturbation (Samek et al., IEEE TNNLS 2017), in torch.

The image is tiled into ``patch_size`` x ``patch_size`` patches (all channels; when the size does
not divide the image, the grid is padded as Quantus pads it: half before, half after, the
attribution with zeros and the image by repeating its edge). Patches are ordered by their summed
saliency, most relevant first (``order="morf"``) or least relevant first (``"lerf"``), and the
first ``regions_evaluation`` of them are replaced by the baseline one after another,
cumulatively. After each replacement the drop of the model's probability of the explained class,
``f(x) - f(x_k)``, is recorded: a curve of ``min(regions_evaluation, #patches)`` points (no
unperturbed point, as Quantus). The score of an image is the area under it as Quantus's
``get_auc_score`` takes it, ``np.trapz(curve, dx=1)`` (the AOPC of the paper up to the factor
``1 / (L + 1)``); ``curve`` is the curve and ``curve_x`` the fraction of the image replaced.
Direction: with ``morf`` a faithful map makes the probability fall fast, so higher is better;
with ``lerf`` lower is better.

Ties (``ties``, see :mod:`interpbench.metrics.base`) between patch sums (on ReLU'd maps, every
patch of zeros ties with the others): ``"random"`` (default) orders tied patches randomly, seeded
by the image (no positional bias); ``"index"`` by patch index, top rows first (earlier versions).
Under both the sums are of the raw map in float64: Quantus's pre-processing (``normalise=True``,
``abs=False``) scales the maps by a positive number, which changes no order. ``"quantus"``:
numpy's ``argsort`` of the sums Quantus computes, in its arithmetic (the normalised map broadcast
over the channels, zero-padded, each patch's ``C * p * p`` values summed by numpy in the map's
dtype), so tied and nearly tied patches go in Quantus's order. Equality with Quantus
(``quantus_reference``, softmax models; uniform draws fed to it in the tests): under
``"quantus"`` on any maps, ties included (tested on ReLU'd Grad-CAM maps upsampled from 4 x 4);
under ``"random"`` and ``"index"`` only on maps whose patch sums do not tie.

Defaults and small images:

- ``patch_size=2`` and ``regions_evaluation=32`` instead of Quantus's 8 and 100, which are sized
  for 224-pixel inputs: 100 of 784 patches of 8 x 8 replace 12.8 % of a 224 x 224 image; an
  8 x 8 patch on a 32 x 32 image is a sixteenth of it and one step would remove as much as
  Quantus's eight. 2 x 2 patches keep a region a small part of the image (256 patches) and
  32 of them replace 12.5 % of it, about Quantus's share, with 32 forward passes per image.
- ``baseline="uniform"`` (one U(0, 1) value per image and patch, the same in all channels and
  pixels of the patch, as Quantus draws it; drawn from a generator seeded by ``seed``): the
  paper's choice of perturbation (uniform noise). Quantus 0.6's default is ``"black"`` (the
  image's minimum over channels and pixels), also offered, with ``"white"`` and any number.
  Quantus's ``"mean"`` (the running mean of the partly perturbed, edge-padded image) is not.

The probability is the model's own (softmax; FA-CNN's L1 normalisation, for which Quantus's
``softmax=True`` reference differs).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    baseline_value,
    quantus_attributions,
    quantus_numpy_compat,
    stacked_logits,
)
from interpbench.metrics.base import Batch, Metric, check_ties, saliency_rank
from interpbench.metrics.pixel_flipping import (
    PF_BASELINES,
    check_baseline,
    check_positive,
    trapezoid_dx1,
    uniform_draws,
)

ORDERS = ("morf", "lerf")
RP_BASELINES = tuple(b for b in PF_BASELINES if b != "zero")


def padding(size: int, patch: int) -> Tuple[int, int]:
    """Quantus's padding of one axis to a multiple of ``patch``: ``(floor(p / 2), ceil(p / 2))``."""
    total = (-size) % patch
    return total // 2, total - total // 2


def patch_ids(height: int, width: int, patch: int, device=None) -> Tuple[torch.Tensor, int]:
    """The patch (row-major over the padded grid) of each pixel ``[H, W]``, and the patch count."""
    (top, bottom), (left, right) = padding(height, patch), padding(width, patch)
    rows = (torch.arange(height, device=device) + top) // patch
    cols = (torch.arange(width, device=device) + left) // patch
    per_row = (width + left + right) // patch
    count = ((height + top + bottom) // patch) * per_row
    return rows[:, None] * per_row + cols[None, :], count


def quantus_patch_sums(saliency: torch.Tensor, channels: int, patch: int) -> np.ndarray:
    """Each patch's attribution sum ``[B, #patches]`` as Quantus 0.6 computes it (numpy, the maps'
    dtype): the normalised map broadcast over ``channels``, zero-padded, and each patch's values
    summed in channel, row, column order; patches row-major over the padded grid."""
    a = quantus_attributions(saliency, channels=channels)
    b, (h, w) = saliency.shape[0], saliency.shape[-2:]
    (top, bottom), (left, right) = padding(h, patch), padding(w, patch)
    a = np.pad(a.reshape(b, channels, h, w), ((0, 0), (0, 0), (top, bottom), (left, right)))
    rows, cols = a.shape[2] // patch, a.shape[3] // patch
    blocks = a.reshape(b, channels, rows, patch, cols, patch).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(blocks).reshape(b, rows * cols, -1).sum(axis=-1)


@METRICS.register("region_perturbation")
class RegionPerturbation(Metric):
    name = "region_perturbation"

    def __init__(self, patch_size: int = 2, regions_evaluation: int = 32, order: str = "morf",
                 baseline: Union[str, float] = "uniform", seed: int = 0, ties: str = "random") -> None:
        check_positive("patch_size", patch_size)
        check_positive("regions_evaluation", regions_evaluation)
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
        baseline = check_baseline(baseline, RP_BASELINES)
        check_ties(ties)
        super().__init__(patch_size=patch_size, regions_evaluation=regions_evaluation, order=order,
                         baseline=baseline, seed=seed, ties=ties)
        self.patch_size, self.regions_evaluation, self.order = patch_size, regions_evaluation, order
        self.baseline, self.seed, self.ties = baseline, seed, ties
        self._curve_x: Optional[List[float]] = None

    @property
    def higher_is_better(self) -> bool:
        return self.order == "morf"

    @property
    def curve_x(self) -> Optional[List[float]]:
        """Fraction of the (padded) patch grid replaced at each point (known once the size is)."""
        return self._curve_x

    def patch_rank(self, batch: Batch) -> Tuple[torch.Tensor, int]:
        """Each pixel's patch position in the order ``[B, H, W]`` and the number of patches."""
        ids, count = patch_ids(*batch.x.shape[-2:], self.patch_size, device=batch.x.device)
        key = ("patch_rank", self.patch_size, self.order, self.ties)
        if key not in batch.cache:
            if self.ties == "quantus":
                sums = torch.from_numpy(quantus_patch_sums(batch.saliency, batch.x.shape[1], self.patch_size))
            else:
                sums = torch.zeros(batch.size, count, dtype=torch.float64, device=batch.x.device)
                sums.index_add_(1, ids.flatten(), batch.saliency.reshape(batch.size, -1).double())
            position = saliency_rank(sums, self.order == "morf", self.ties, images=batch.x)
            batch.cache[key] = position.to(batch.x.device)
        position = batch.cache[key]
        return position.gather(1, ids.flatten().expand(batch.size, -1)).view(batch.size, *ids.shape), count

    def values(self, batch: Batch, steps: int) -> torch.Tensor:
        """The fill of each step and image ``[steps, B]`` (uniform: the draws a seeded Quantus run makes)."""
        if self.baseline == "uniform":
            return uniform_draws(self.seed, (steps, batch.size), batch.x.device)
        return baseline_value(self.baseline, batch.x).view(1, -1).expand(steps, -1).double()

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = batch.x
        position, count = self.patch_rank(batch)
        steps = min(self.regions_evaluation, count)
        values = self.values(batch, steps).to(x.dtype)  # [T, B]
        position = position.unsqueeze(1)  # [B, 1, H, W]
        fill = values.T.gather(1, position.clamp(max=steps - 1).flatten(1)).view_as(position)

        def build(indices):
            steps = torch.as_tensor(indices, device=x.device).view(-1, 1, 1, 1, 1)
            return torch.where(position[None] <= steps, fill[None], x[None])

        baseline_id = ("uniform", self.seed) if self.baseline == "uniform" else self.baseline
        key = ("region_perturbation", self.order, self.patch_size, baseline_id, steps, self.ties)
        logits = stacked_logits(batch, key, steps, build)
        probabilities = batch.pick(batch.probabilities(logits))  # [T, B]
        clean = batch.pick(batch.probabilities(batch.clean_logits()))  # [B]
        curve = (clean[None] - probabilities).T.contiguous()
        self._curve_x = [round((t + 1) / count, 6) for t in range(steps)]
        return {"score": trapezoid_dx1(curve), "curve": curve}

    def quantus_reference(self):
        """``(quantus.RegionPerturbation, call kwargs)`` with these settings. Quantus returns the
        curve of each image; our score is ``np.trapz(curve, dx=1)`` of it."""
        import quantus

        quantus_numpy_compat()
        metric = quantus.RegionPerturbation(
            patch_size=self.patch_size, regions_evaluation=self.regions_evaluation, order=self.order,
            perturb_baseline=self.baseline, abs=False, normalise=True,
            disable_warnings=True, display_progressbar=False)
        return metric, {"softmax": True, "channel_first": True}
