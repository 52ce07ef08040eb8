"""``pixel_flipping``: Quantus's PixelFlipping (Bach et al., PLoS ONE 2015), batched in torch.

Pixels are replaced by a baseline in the order of decreasing saliency, ``features_in_step`` pixels
(all channels) at a time and cumulatively, and after each step the model's probability of the
explained class is recorded: a curve of ``n = ceil(H * W / features_in_step)`` points, the first
after the first step, the last with every pixel replaced (Quantus records no unperturbed point).
The score of an image is the area under its curve the way Quantus's ``return_auc_per_sample=True``
computes it, ``np.trapz(curve, dx=1)``; ``curve`` is the curve itself, ``curve_x`` the fraction
of pixels replaced. A faithful map destroys the evidence first: lower is better.

Ties (``ties``, see :mod:`interpbench.metrics.base`). ``"random"`` (default): tied pixels go in
a random order seeded by the image (no positional bias); ``"index"``: in pixel order, top rows
first (earlier versions). Under both, a pixel goes whole (all channels in one step) and the raw
saliency is ranked: Quantus's pre-processing (``normalise=True``, ``abs=False``) divides the maps
by a positive number, which changes no order. ``"quantus"``: the order of numpy's ``argsort`` of
the array Quantus sorts, the normalised map broadcast over the ``C`` channels (``C * H * W``
features), and the first ``C * k`` features of that order are replaced after ``k`` pixels' worth
(so where tied pixels straddle a step, some of a pixel's channels can go before the others, as
in Quantus). Equality with Quantus (``quantus_reference``; softmax models; with
``"uniform"``, given the same draws, which the tests feed to Quantus): under ``"quantus"`` on any
maps, ties included (tested on ReLU'd Grad-CAM maps upsampled from 4 x 4); under ``"random"`` and
``"index"`` only on maps without ties. With ``"quantus"`` the suite does not share deletion's
forward passes (the images differ wherever a step splits a pixel's channels).

Defaults changed for small images, and why:

- ``features_in_step=None`` means one image row's worth of pixels (32 at 32 x 32: 32 forward
  passes per image), instead of Quantus's 1 (1024 passes per image at 32 x 32; RISE's deletion
  also moves one row's worth per step). Quantus counts features per channel, so ours is
  ``C * features_in_step`` of Quantus's; its check that the step divides ``H * W`` (not the
  ``C * H * W`` features it actually steps through) rejects every such step for 3-channel
  32 x 32 images, so :meth:`quantus_reference` skips that check and nothing else.
- ``baseline="zero"``: exactly 0 in pixel space. Quantus's default ``"black"`` is each image's
  minimum over its channels and pixels, which is 0 only for images that contain a black pixel.
  With a zero baseline, row-sized steps and the same tie rule the perturbed images are exactly
  those of ``deletion(baseline="zero")``, so the suite evaluates them once
  (``Batch.removal_logits``, baseline id ``0.0``, most salient first). ``"black"``, ``"white"`` (the image's maximum), ``"uniform"`` (one U(0, 1)
  value per image and step, drawn from a generator seeded by ``seed``) and any number give
  Quantus's other baselines. Quantus's ``"mean"`` (the mean of the partly perturbed image,
  recomputed at every step) is not offered.

The probability is the model's own (softmax; FA-CNN's L1 normalisation, which Quantus cannot
express: its ``softmax=True`` is used for the reference, so only softmax models match it).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    BASELINES,
    baseline_value,
    quantus_numpy_compat,
    stacked_logits,
)
from interpbench.metrics.base import Batch, Metric, check_ties
from interpbench.metrics.insertion_deletion import step_counts

PF_BASELINES = ("zero",) + tuple(b for b in BASELINES if b != "mean")


def check_baseline(baseline: Union[str, float, int], valid=PF_BASELINES) -> Union[str, float]:
    """A baseline name from ``valid`` or a number; anything else is a one-line error."""
    if isinstance(baseline, bool) or not isinstance(baseline, (str, float, int)) or (
            isinstance(baseline, str) and baseline not in valid):
        raise ValueError(f"unknown baseline {baseline!r}; valid baselines: a number or {', '.join(valid)}")
    return baseline if isinstance(baseline, str) else float(baseline)


def check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")


def trapezoid_dx1(curve: torch.Tensor) -> torch.Tensor:
    """``np.trapz(curve, dx=1)`` along the last axis (0 for a single point)."""
    if curve.shape[-1] < 2:
        return torch.zeros(curve.shape[:-1], dtype=curve.dtype, device=curve.device)
    return curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2


def uniform_draws(seed: int, shape: Tuple[int, ...], device) -> torch.Tensor:
    """U(0, 1) draws (float64) from a CPU generator seeded by ``seed``, moved to ``device``."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(device)


@METRICS.register("pixel_flipping")
class PixelFlipping(Metric):
    name = "pixel_flipping"

    def __init__(self, features_in_step: Optional[int] = None, baseline: Union[str, float] = "zero",
                 seed: int = 0, ties: str = "random") -> None:
        check_positive("features_in_step", features_in_step, allow_none=True)
        baseline = check_baseline(baseline)
        check_ties(ties)
        super().__init__(features_in_step=features_in_step, baseline=baseline, seed=seed, ties=ties)
        self.features_in_step, self.baseline, self.seed, self.ties = features_in_step, baseline, seed, ties
        self._curve_x: Optional[List[float]] = None
        self._last_shape: Optional[Tuple[int, ...]] = None

    @property
    def higher_is_better(self) -> bool:
        return False

    @property
    def curve_x(self) -> Optional[List[float]]:
        """Fraction of pixels replaced at each point (known once the image size is)."""
        return self._curve_x

    def step(self, width: int) -> int:
        return self.features_in_step or width

    def counts(self, batch: Batch) -> List[int]:
        return step_counts(batch.num_pixels, self.step(batch.x.shape[-1]))[1:]  # no untouched point

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, counts = batch.x, self.counts(batch)
        self._last_shape = tuple(x.shape[1:])
        if self.baseline == "uniform":
            logits = self._uniform_logits(batch, counts)
        else:
            if self.baseline in ("zero", 0.0):
                fill, fill_id = torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device), 0.0
            elif isinstance(self.baseline, float):
                fill, fill_id = baseline_value(self.baseline, x), ("value", self.baseline)
            else:  # per-image minimum / maximum over channels and pixels: constant as pixels go
                fill, fill_id = baseline_value(self.baseline, x), ("quantus", self.baseline)
            logits = batch.removal_logits(counts, fill, fill_id, descending=True, ties=self.ties)
        curve = batch.pick(batch.probabilities(logits)).T.contiguous()  # [B, n]
        self._curve_x = [round(k / batch.num_pixels, 6) for k in counts]
        return {"score": trapezoid_dx1(curve), "curve": curve}

    def uniform_values(self, batch: Batch, steps: int) -> torch.Tensor:
        """The fill of each step and image ``[steps, B]`` (the draws a seeded Quantus run makes)."""
        return uniform_draws(self.seed, (steps, batch.size), batch.x.device)

    def _uniform_logits(self, batch: Batch, counts: List[int]) -> torch.Tensor:
        x, step = batch.x, self.step(batch.x.shape[-1])
        values = self.uniform_values(batch, len(counts)).to(x.dtype)  # [T, B]
        # the step of each feature (channel of a pixel): whole pixels unless ties="quantus"
        features = batch.feature_rank(True, self.ties)  # [B, C*H*W]
        step_of = (features // (x.shape[1] * step)).view_as(x)  # [B, C, H, W]
        fill = values.T.gather(1, step_of.flatten(1)).view_as(step_of)  # [B, C, H, W]

        def build(indices):
            steps = torch.as_tensor(indices, device=x.device).view(-1, 1, 1, 1, 1)
            return torch.where(step_of[None] <= steps, fill[None], x[None])

        key = ("pixel_flipping", "uniform", self.seed, step, self.ties)
        return stacked_logits(batch, key, len(counts), build)

    def quantus_reference(self, image_shape: Optional[Tuple[int, int, int]] = None):
        """``(quantus.PixelFlipping, call kwargs)`` with this metric's settings.

        ``image_shape`` (``(C, H, W)``; default: the last batch computed, else 3 x 32 x 32) sets
        Quantus's per-channel step. Quantus returns per-image AUCs (``return_auc_per_sample``).
        """
        import quantus

        quantus_numpy_compat()

        class _PixelFlipping(quantus.PixelFlipping):
            def custom_preprocess(self, x_batch, **kwargs):  # the step/H*W check only (see above)
                return None

        c, _, w = image_shape or self._last_shape or (3, 32, 32)
        baseline = 0.0 if self.baseline == "zero" else self.baseline
        metric = _PixelFlipping(features_in_step=c * self.step(w), perturb_baseline=baseline,
                                abs=False, normalise=True, return_auc_per_sample=True,
                                disable_warnings=True, display_progressbar=False)
        return metric, {"softmax": True, "channel_first": True}
