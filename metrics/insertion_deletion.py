"""``insertion`` and ``deletion``: the causal metrics of RISE (Petsiuk et al., BMVC 2018).

Pixels are visited in the order of decreasing saliency (ties broken by pixel index), ``step``
at a time, and after each step the model's probability of the explained class is recorded:

- ``deletion``: the visited pixels of the image are set to zero (black, in pixel space, all
  channels). A faithful map destroys the evidence first, so the curve falls fast: lower is better.
  ``baseline="mean"`` sets them to the dataset mean instead, i.e. zero after the model's
  normalisation, which is what the RISE code's ``zeros_like`` of a normalised image amounts to.
- ``insertion``: the visited pixels of a blurred copy of the image (Gaussian, kernel 11,
  sigma 5) get the image's values back. A faithful map restores the evidence first, so the
  curve rises fast: higher is better.

The curve has ``n + 1`` points for ``n = ceil(H * W / step)`` steps (the first point is the
untouched start, the last the finished image); ``curve_x`` is the fraction of pixels visited. The
score is the RISE area ``(sum - first/2 - last/2) / n``, i.e. the trapezoidal area over equally
spaced steps. The probability is the model's own (softmax, FA-CNN's L1 normalisation) of the
class each map explains (``batch.target``: the predicted class by default, as in RISE; the true
label when the cell asks for it).

Defaults and small images: RISE moves 224 pixels per step on 224 x 224 images, one row's worth;
``step=None`` keeps that rule at any size (the image width: 32 steps and 33 points at 32 x 32).
The RISE code blurs the normalised image with zero padding; here the blur is applied in pixel
space with reflected borders (torchvision's ``gaussian_blur``), because at 32 pixels an
11-pixel kernel with zero padding would darken a 5-pixel frame, a third of the image.

Both metrics read ``Batch.removal_logits``: deletion under the key of a zero baseline
(``0.0``), which pixel flipping to a black baseline in the same order shares (``"mean"`` with
``baseline="mean"``), and insertion under
``("blur", 11, 5.0)``. The untouched image (deletion's first point, insertion's last) is the clean
image, whose logits any metric of the suite shares.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def gaussian_blur(x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """``x [B, 3, H, W]`` blurred by a Gaussian (reflected borders), as insertion's start image."""
    from torchvision.transforms.functional import gaussian_blur as blur

    h, w = x.shape[-2:]
    if min(h, w) <= kernel // 2:
        raise ValueError(f"insertion blurs with an {kernel}-pixel kernel: images need at least "
                         f"{kernel // 2 + 1} x {kernel // 2 + 1} pixels, got {h} x {w}")
    return blur(x, [kernel, kernel], [sigma, sigma])


def rise_auc(curve: torch.Tensor) -> torch.Tensor:
    """RISE's area under ``curve [B, n + 1]``: ``(sum - first/2 - last/2) / n``."""
    return (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)


def step_counts(num_pixels: int, step: int) -> List[int]:
    """Pixels visited after each of the ``ceil(num_pixels / step)`` steps, from 0 to all."""
    steps = -(-num_pixels // step)
    return [min(i * step, num_pixels) for i in range(steps + 1)]


class _Causal(Metric):
    insert: bool = False

    def __init__(self, step: Optional[int] = None) -> None:
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ValueError(f"step must be a positive number of pixels or None (the image width), got {step!r}")
        super().__init__(step=step)
        self.step = step
        self._curve_x: Optional[List[float]] = None

    @property
    def higher_is_better(self) -> bool:
        return self.insert

    @property
    def curve_x(self) -> Optional[List[float]]:
        """Fraction of pixels visited at each point (known once the image size is)."""
        return self._curve_x

    def counts(self, batch: Batch) -> List[int]:
        return step_counts(batch.num_pixels, self.step or batch.x.shape[-1])

    def baseline(self, batch: Batch):
        raise NotImplementedError

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        counts = self.counts(batch)
        fill, fill_id = self.baseline(batch)
        # the untouched image is the clean one: share its logits with the rest of the suite
        untouched = batch.num_pixels if self.insert else 0
        key = ("removal", True, self.insert, fill_id, untouched)
        if key not in batch.cache:
            batch.cache[key] = batch.clean_logits()
        logits = batch.removal_logits(counts, fill, fill_id, descending=True, insert=self.insert)
        curve = batch.pick(batch.probabilities(logits)).T.contiguous()  # [B, n + 1]
        self._curve_x = [round(k / batch.num_pixels, 6) for k in counts]
        return {"score": rise_auc(curve), "curve": curve}


DELETION_BASELINES = ("zero", "mean")


@METRICS.register("deletion")
class Deletion(_Causal):
    """RISE deletion: most salient pixels set to zero (or the dataset mean) first; lower is better."""

    name = "deletion"
    insert = False

    def __init__(self, step: Optional[int] = None, baseline: str = "zero") -> None:
        if baseline not in DELETION_BASELINES:
            raise ValueError(f"unknown baseline '{baseline}'; valid baselines: {', '.join(DELETION_BASELINES)}")
        super().__init__(step=step)
        self.params["baseline"] = baseline
        self.fill = baseline

    def baseline(self, batch: Batch):
        x = batch.x
        if self.fill == "mean":
            return batch.model.mean.to(x), "mean"
        return torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device), 0.0


@METRICS.register("insertion")
class Insertion(_Causal):
    """RISE insertion: most salient pixels restored into a blurred copy first; higher is better."""

    name = "insertion"
    insert = True

    def baseline(self, batch: Batch):
        key = ("image", "blur", BLUR_KERNEL, BLUR_SIGMA)
        if key not in batch.cache:
            batch.cache[key] = gaussian_blur(batch.x)
        return batch.cache[key], ("blur", BLUR_KERNEL, BLUR_SIGMA)
