"""``monotonicity_correlation``: Quantus's MonotonicityCorrelation (Nguyen & Martinez 2020), in torch.

Pixels are grouped in the order of increasing absolute saliency, ``features_in_step`` pixels (all
channels) per group. Each group alone is replaced, in a copy of the image (not cumulatively),
``nr_samples`` times by a baseline drawn afresh (default: one U(0, 1) value per image and sample),
and the group's variance ``v_t = mean_s (f(x_ts) - f(x))^2 / f(x)^2`` (``1 / f(x)^2`` replaced by 1
when ``|f(x)| < eps``) is paired with its summed absolute attribution. The score of an image is
the Spearman rank correlation of the two over the groups (Quantus's per-image output; NaN when
either is constant). Features that matter more should perturb the prediction more: higher is
better.

Quantus pre-processing (``normalise=True``, ``abs=True``): the maps' absolute values are ranked and
summed; the positive scale of the normalisation, and the per-image factor ``1 / f(x)^2``, change no
rank. Ties (``ties``, see :mod:`interpbench.metrics.base`) decide which pixels share a group:
``"random"`` (default) puts tied pixels in a random order seeded by the image (no positional
bias), ``"index"`` in pixel order, top rows first (earlier versions); under both a group holds
whole pixels and its ``|saliency|`` is summed in float64 (Quantus's sums over the channels are
``C`` times these, which no rank sees). ``"quantus"``: numpy's ``argsort`` of the array Quantus
sorts (the normalised, absolute map broadcast over the ``C`` channels), a group being ``C *
features_in_step`` consecutive features of that order (a tied pixel's channels may fall in
different groups, as in Quantus), each group's attribution summed as Quantus sums it (numpy, the
map's dtype: Spearman ranks of nearly equal sums depend on it). Equality with Quantus
(``quantus_reference``; softmax models; uniform draws fed to it in the tests): under
``"quantus"`` on any maps, ties included (tested on ReLU'd Grad-CAM maps upsampled from 4 x 4);
under ``"random"`` and ``"index"`` only on maps without ties.

Defaults and small images: ``features_in_step=None`` means one image row's worth of pixels (32
groups at 32 x 32) instead of Quantus's 1 per-channel feature (3072 groups), and ``nr_samples=10``
instead of 100: Quantus's defaults cost 307,200 forward passes per 32 x 32 image, ours 320 (the
variance of each group is then an average of 10 draws). Quantus's step counts per-channel
features, so ours is ``C * features_in_step`` of Quantus's; :meth:`quantus_reference` skips its
check that the step divides ``H * W`` (no multiple of 3 divides 1024) and nothing else.
``baseline="uniform"`` as Quantus (drawn from a generator seeded by ``seed``); ``"black"``,
``"white"``, ``"mean"`` (the image's statistics) and numbers are deterministic, so one sample is
evaluated for them (all ``nr_samples`` would be equal).

The probability is the model's own (softmax; FA-CNN's L1 normalisation, for which Quantus's
``softmax=True`` reference differs).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    BASELINES,
    quantus_attributions,
    quantus_group_sums,
    quantus_numpy_compat,
    spearman,
)
from interpbench.metrics.base import Batch, Metric, check_ties
from interpbench.metrics.faithfulness_estimate import (
    group_fills,
    group_sums,
    single_group_logits,
)
from interpbench.metrics.pixel_flipping import check_baseline, check_positive


@METRICS.register("monotonicity_correlation")
class MonotonicityCorrelation(Metric):
    name = "monotonicity_correlation"

    def __init__(self, features_in_step: Optional[int] = None, nr_samples: int = 10,
                 baseline: Union[str, float] = "uniform", eps: float = 1e-5, seed: int = 0,
                 ties: str = "random") -> None:
        check_positive("features_in_step", features_in_step, allow_none=True)
        check_positive("nr_samples", nr_samples)
        baseline = check_baseline(baseline, BASELINES)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        check_ties(ties)
        super().__init__(features_in_step=features_in_step, nr_samples=nr_samples, baseline=baseline,
                         eps=eps, seed=seed, ties=ties)
        self.features_in_step, self.nr_samples, self.baseline = features_in_step, nr_samples, baseline
        self.eps, self.seed, self.ties = float(eps), seed, ties
        self._last_shape: Optional[Tuple[int, ...]] = None

    @property
    def higher_is_better(self) -> bool:
        return True

    def step(self, width: int) -> int:
        return self.features_in_step or width

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        self._last_shape = tuple(batch.x.shape[1:])
        step = self.step(batch.x.shape[-1])
        steps = -(-batch.num_pixels // step)
        channels = batch.x.shape[1]
        # groups by increasing |saliency|; whole pixels (C consecutive features) unless "quantus"
        rank = batch.feature_rank(False, self.ties, abs=True)  # [B, C*H*W]
        if self.ties == "quantus":
            group = rank // (channels * step)
            values = quantus_attributions(batch.saliency, channels, abs=True)
            relevance = quantus_group_sums(values, rank, channels * step)
        else:
            group = rank[:, : batch.num_pixels] // (channels * step)  # [B, H*W]: channel 0, C * rank
            relevance = group_sums(batch, group, steps, batch.saliency.abs().reshape(batch.size, -1))
        samples = self.nr_samples if self.baseline == "uniform" else 1
        fills = group_fills(batch, self.baseline, self.seed, steps, samples)  # [T, S, B]
        baseline_id = ("uniform", self.seed, samples) if self.baseline == "uniform" else self.baseline
        key = ("single_group", "ascending_abs", step, baseline_id, self.ties)
        logits = single_group_logits(batch, key, group, fills)  # [T * S, B, K]
        perturbed = batch.pick(batch.probabilities(logits)).view(steps, samples, batch.size).double()
        clean = batch.pick(batch.probabilities(batch.clean_logits())).double()  # [B]
        inverse = torch.where(clean.abs() >= self.eps, 1.0 / clean.abs(), torch.ones_like(clean)) ** 2
        variance = ((perturbed - clean) ** 2).mean(dim=1) * inverse  # [T, B]
        return {"score": spearman(relevance, variance.T)}

    def quantus_reference(self, image_shape: Optional[Tuple[int, int, int]] = None):
        """``(quantus.MonotonicityCorrelation, call kwargs)`` with these settings (per-image
        scores). ``image_shape`` (``(C, H, W)``; default: the last batch computed, else
        3 x 32 x 32) sets Quantus's per-channel step."""
        import quantus

        quantus_numpy_compat()

        class _MonotonicityCorrelation(quantus.MonotonicityCorrelation):
            def custom_preprocess(self, x_batch, **kwargs):  # the step/H*W check only (see above)
                return None

        c, _, w = image_shape or self._last_shape or (3, 32, 32)
        metric = _MonotonicityCorrelation(
            features_in_step=c * self.step(w), nr_samples=self.nr_samples, eps=self.eps,
            perturb_baseline=self.baseline, abs=True, normalise=True, disable_warnings=True,
            display_progressbar=False)
        return metric, {"softmax": True, "channel_first": True}
