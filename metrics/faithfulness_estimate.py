"""``faithfulness_estimate``: Quantus's FaithfulnessEstimate (Alvarez-Melis & Jaakkola, NeurIPS 2018).

Pixels are grouped in the order of decreasing saliency, ``features_in_step`` pixels (all
channels) per group. Each group alone is replaced by the baseline in a copy of the image (not
cumulatively), and the drop of the model's probability of the explained class, ``f(x) - f(x_t)``,
is paired with the group's summed attribution. The score of an image is the Pearson correlation
of the two over the ``ceil(H * W / features_in_step)`` groups (Quantus's per-image output; NaN
when either is constant). A faithful map gives a large drop where it puts large relevance:
higher is better.

Ties (``ties``, see :mod:`interpbench.metrics.base`) decide which pixels share a group.
``"random"`` (default): tied pixels in a random order seeded by the image (no positional bias);
``"index"``: in pixel order, top rows first (earlier versions). Under both a group holds whole
pixels and the raw saliency is used: Quantus's pre-processing (``normalise=True``, ``abs=False``)
divides the maps by a positive number, which changes neither the order nor a correlation, and
its per-channel sums are ``C`` times ours, which no correlation sees. ``"quantus"``: numpy's
``argsort`` of the array Quantus sorts (the normalised map broadcast over the ``C`` channels), a
group being ``C * features_in_step`` consecutive features of that order (so a tied pixel's
channels may fall in different groups, as in Quantus), and each group's attribution summed as
Quantus sums it (numpy, the map's dtype). Equality with Quantus (``quantus_reference``; softmax
models; uniform draws fed to it in the tests): under ``"quantus"`` on any maps, ties included
(tested on ReLU'd Grad-CAM maps upsampled from 4 x 4); under ``"random"`` and ``"index"`` only
on maps without ties.

Defaults and small images: ``features_in_step=None`` means one image row's worth of pixels (32 at
32 x 32: 32 groups, 32 forward passes per image) instead of Quantus's 1 (3072 per-channel
features, i.e. 3072 forward passes per 32 x 32 image); Quantus's step counts per-channel
features, so ours is ``C * features_in_step`` of Quantus's, and :meth:`quantus_reference` skips
Quantus's check that the step divides ``H * W`` (no multiple of 3 divides 1024) and nothing
else. ``baseline="black"`` as Quantus: each image's minimum over channels and pixels; also
``"white"``, ``"mean"`` (the image's mean: the copies are perturbed from the clean image, so it is
Quantus's value), ``"uniform"`` (one U(0, 1) value per image and group, seeded by ``seed``) and
any number.

The probability is the model's own (softmax; FA-CNN's L1 normalisation, for which Quantus's
``softmax=True`` reference differs).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    BASELINES,
    baseline_value,
    pearson,
    quantus_attributions,
    quantus_group_sums,
    quantus_numpy_compat,
    stacked_logits,
)
from interpbench.metrics.base import Batch, Metric, check_ties
from interpbench.metrics.pixel_flipping import (
    check_baseline,
    check_positive,
    uniform_draws,
)

FE_BASELINES = BASELINES


def group_sums(batch: Batch, group: torch.Tensor, groups: int, values: torch.Tensor) -> torch.Tensor:
    """``values [B, H*W]`` summed per group (``group [B, H*W]`` in ``0..groups-1``) -> ``[B, groups]``."""
    out = torch.zeros(batch.size, groups, dtype=torch.float64, device=values.device)
    return out.scatter_add_(1, group, values.double())


def group_fills(batch: Batch, baseline, seed: int, steps: int, per_step: int = 1) -> torch.Tensor:
    """The fill of each group (and sample) and image ``[steps, per_step, B]``, float64."""
    if baseline == "uniform":
        return uniform_draws(seed, (steps, per_step, batch.size), batch.x.device)
    return baseline_value(baseline, batch.x).view(1, 1, -1).double().expand(steps, per_step, -1)


def single_group_logits(batch: Batch, key, group: torch.Tensor, fills: torch.Tensor) -> torch.Tensor:
    """Logits ``[T * S, B, K]`` of the copies with group ``t`` alone set to ``fills[t, s]``.

    ``group``: each pixel's group ``[B, H*W]`` (all channels), or each feature's ``[B, C*H*W]``;
    ``fills [T, S, B]``.
    """
    x = batch.x
    steps, samples = fills.shape[:2]
    group_map = group.view(batch.size, -1, *x.shape[-2:])
    fills = fills.to(x.dtype)

    def build(indices):
        index = torch.as_tensor(indices, device=x.device)
        t, s = index // samples, index % samples
        chosen = group_map[None] == t.view(-1, 1, 1, 1, 1)  # [P, B, 1, H, W]
        return torch.where(chosen, fills[t, s][..., None, None, None], x[None])

    return stacked_logits(batch, key, steps * samples, build)


@METRICS.register("faithfulness_estimate")
class FaithfulnessEstimate(Metric):
    name = "faithfulness_estimate"

    def __init__(self, features_in_step: Optional[int] = None, baseline: Union[str, float] = "black",
                 seed: int = 0, ties: str = "random") -> None:
        check_positive("features_in_step", features_in_step, allow_none=True)
        baseline = check_baseline(baseline, FE_BASELINES)
        check_ties(ties)
        super().__init__(features_in_step=features_in_step, baseline=baseline, seed=seed, ties=ties)
        self.features_in_step, self.baseline, self.seed, self.ties = features_in_step, baseline, seed, ties
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
        if self.ties == "quantus":  # groups of features, summed as Quantus sums them
            channels = batch.x.shape[1]
            rank = batch.feature_rank(True, "quantus")  # [B, C*H*W]
            group = rank // (channels * step)
            relevance = quantus_group_sums(quantus_attributions(batch.saliency, channels), rank, channels * step)
        else:
            group = batch.rank(True, self.ties) // step  # [B, H*W]
            relevance = group_sums(batch, group, steps, batch.saliency.reshape(batch.size, -1))
        fills = group_fills(batch, self.baseline, self.seed, steps)
        baseline_id = ("uniform", self.seed) if self.baseline == "uniform" else self.baseline
        key = ("single_group", True, step, baseline_id, self.ties)
        logits = single_group_logits(batch, key, group, fills)  # [T, B, K]
        clean = batch.pick(batch.probabilities(batch.clean_logits()))  # [B]
        drops = clean[None] - batch.pick(batch.probabilities(logits))  # [T, B]
        return {"score": pearson(relevance, drops.T)}

    def quantus_reference(self, image_shape: Optional[Tuple[int, int, int]] = None):
        """``(quantus.FaithfulnessEstimate, call kwargs)`` with these settings (per-image scores).
        ``image_shape`` (``(C, H, W)``; default: the last batch computed, else 3 x 32 x 32) sets
        Quantus's per-channel step."""
        import quantus

        quantus_numpy_compat()

        class _FaithfulnessEstimate(quantus.FaithfulnessEstimate):
            def custom_preprocess(self, x_batch, **kwargs):  # the step/H*W check only (see above)
                return None

        c, _, w = image_shape or self._last_shape or (3, 32, 32)
        metric = _FaithfulnessEstimate(features_in_step=c * self.step(w), perturb_baseline=self.baseline,
                                       abs=False, normalise=True, disable_warnings=True,
                                       display_progressbar=False)
        return metric, {"softmax": True, "channel_first": True}
