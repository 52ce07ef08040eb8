"""``irof``: Quantus's IROF, Iterative Removal Of Features (Rieger & Hansen 2020), in torch.

Each image is cut into superpixels by SLIC (scikit-image's ``slic`` with its defaults and
``start_label=0``: about 100 segments, as Quantus calls it). Segments are ordered by their mean
saliency, most relevant first, and replaced by the baseline one after another, cumulatively;
after each removal the model's probability of the explained class is divided by the clean
image's. The score of an image with ``n`` segments is the area over that curve of ``n`` points,
``n - np.trapz(curve, dx=1)`` (Quantus's per-image output; NaN for an image SLIC leaves in one
segment). No curve is returned: its length differs from image to image. A faithful map removes
the evidence first, the ratio falls fast and the area over it is large: higher is better.

The segmentation runs on the CPU with scikit-image (a Quantus dependency), once per image and
cached in the batch; the removals and forward passes are batched in torch on the model's device
(only the ``n`` steps an image has are evaluated).

Ties (``ties``, see :mod:`interpbench.metrics.base`) between segment means (on ReLU'd maps every
segment of zeros ties with the others): ``"random"`` (default) removes tied segments in a random
order seeded by the image (no positional bias); ``"index"`` by segment label (SLIC numbers them
from the top left; earlier versions). Under both the means are of the raw map in float64:
Quantus's pre-processing (``normalise=True``, ``abs=False``) scales the maps by a positive
number, which changes no order. ``"quantus"``: numpy's ``argsort`` of the means Quantus computes,
in its arithmetic (numpy's mean, in the map's dtype, of the normalised map broadcast over the
channels, one image at a time), so tied and nearly tied segments go in Quantus's order.
Equality with Quantus (``quantus_reference``, softmax models): under ``"quantus"`` on any maps,
ties included (tested on ReLU'd Grad-CAM maps upsampled from 4 x 4); under ``"random"`` and
``"index"`` only on maps whose segment means do not tie.

``baseline="mean"`` as Quantus: the removed segment gets the mean, over all channels and pixels,
of the image as perturbed so far (recomputed at each step: a running mean, computed here by its
exact recurrence). Quantus evaluates a whole batch at once and then takes that mean over the
batch, and zero-pads the curves of images with fewer segments (which adds half the last point to
their area), so its per-image score depends on the other images of its batch; each image's
score here is Quantus's for that image alone, and :meth:`quantus_reference` calls Quantus with
``batch_size=1`` to match; it also broadcasts the segment mask over the channels (Quantus 0.6
passes a one-channel mask that its own replacement function rejects for colour images). Also
``"black"`` / ``"white"`` (the image's minimum / maximum) and any number. No default is changed
for small images: SLIC's segment count does not depend on the image size.

The probability is the model's own (softmax; FA-CNN's L1 normalisation, for which Quantus's
``softmax=True`` reference differs).
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np
import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import baseline_value, quantus_attributions, quantus_numpy_compat
from interpbench.metrics.base import Batch, Metric, check_ties, saliency_rank
from interpbench.metrics.pixel_flipping import check_baseline

IROF_BASELINES = ("mean", "black", "white")


def slic_segments(batch: Batch) -> torch.Tensor:
    """SLIC superpixels of each image ``[B, H, W]`` (labels 0..n-1), computed once per batch."""
    key = ("segments", "slic")
    if key not in batch.cache:
        from skimage.segmentation import slic

        images = batch.x.detach().double().permute(0, 2, 3, 1).cpu().numpy()
        labels = np.stack([slic(image, start_label=0) for image in images])
        batch.cache[key] = torch.as_tensor(labels, dtype=torch.long, device=batch.x.device)
    return batch.cache[key]


def quantus_segment_order(saliency: torch.Tensor, segments: torch.Tensor, channels: int) -> torch.Tensor:
    """The segment labels ``[B, S]`` (``S`` = largest label + 1) in Quantus 0.6's removal order.

    Per image, the mean attribution of each segment present (label order) as Quantus computes it
    (numpy's mean, in the map's dtype, of the normalised map broadcast over ``channels``), then
    numpy's ``argsort`` of the negated means; labels absent from an image come last.
    """
    a = quantus_attributions(saliency, channels)
    a = a.reshape(saliency.shape[0], channels, *saliency.shape[-2:])
    labels = segments.cpu().numpy()
    size = int(labels.max()) + 1
    orders = []
    for values, image_labels in zip(a, labels):
        present = np.unique(image_labels)
        means = np.zeros(len(present))
        for i, label in enumerate(present):
            means[i] = np.mean(values[:, image_labels == label])
        absent = np.setdiff1d(np.arange(size), present)
        orders.append(np.concatenate([present[np.argsort(-means)], absent]))
    return torch.as_tensor(np.stack(orders), dtype=torch.long, device=segments.device)


@METRICS.register("irof")
class IROF(Metric):
    name = "irof"

    def __init__(self, baseline: Union[str, float] = "mean", ties: str = "random") -> None:
        baseline = check_baseline(baseline, IROF_BASELINES)
        check_ties(ties)
        super().__init__(baseline=baseline, ties=ties)
        self.baseline, self.ties = baseline, ties

    @property
    def higher_is_better(self) -> bool:
        return True

    def segment_order(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each pixel's segment position in the removal order ``[B, H, W]``, each image's segment
        count ``[B]``, and the segments' pixel counts in removal order ``[B, S]``."""
        segments = slic_segments(batch)
        flat = segments.flatten(1)
        size = int(flat.max()) + 1
        counts = torch.zeros(batch.size, size, dtype=torch.float64, device=flat.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
        if self.ties == "quantus":
            order = quantus_segment_order(batch.saliency, segments, batch.x.shape[1])
        else:
            saliency = batch.saliency.reshape(batch.size, -1).double()
            sums = torch.zeros_like(counts).scatter_add_(1, flat, saliency)
            means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, -float("inf")))
            # absent labels last; the random priorities of labels do not depend on the batch's largest
            rank = saliency_rank(means, True, self.ties, images=batch.x, span=batch.num_pixels).to(flat.device)
            order = torch.argsort(rank, dim=1)
        ranks = torch.arange(size, device=order.device).expand_as(order)
        position = torch.empty_like(order).scatter_(1, order, ranks)
        return (position.gather(1, flat).view_as(segments), (counts > 0).sum(1),
                counts.gather(1, order))

    def fills(self, batch: Batch, position: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The fill of each step and image ``[S, B]`` (float64)."""
        x = batch.x.double()
        steps = pixels.shape[1]
        if self.baseline != "mean":
            return baseline_value(self.baseline, x).view(1, -1).expand(steps, -1)
        # running mean of the partly perturbed image: removing step t's segment (untouched so
        # far) with value m_t moves the mean by (C * n_t * m_t - sum of its values) / (C * H * W)
        channel_sums = x.sum(1).flatten(1)  # [B, H*W]
        totals = torch.zeros(batch.size, steps, dtype=torch.float64, device=x.device)
        totals.scatter_add_(1, position.flatten(1), channel_sums)
        features = float(x[0].numel())
        mean = x.flatten(1).mean(1)
        values = []
        for t in range(steps):
            values.append(mean)
            mean = mean + (x.shape[1] * pixels[:, t] * mean - totals[:, t]) / features
        return torch.stack(values)

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = batch.x
        position, count, pixels = self.segment_order(batch)
        steps = pixels.shape[1]
        fill = self.fills(batch, position, pixels).to(x.dtype).T.gather(1, position.flatten(1))
        fill = fill.view(batch.size, 1, *x.shape[-2:])
        position = position.unsqueeze(1)  # [B, 1, H, W]
        # only the steps an image has: pairs (t, b) with t < count[b], t-major
        valid = torch.arange(steps, device=x.device)[:, None] < count[None]
        t_index, b_index = torch.nonzero(valid, as_tuple=True)
        key = ("irof", "slic", self.baseline, self.ties)
        if key not in batch.cache:
            per = max(1, batch.chunk)
            parts = []
            for s in range(0, t_index.numel(), per):
                t, b = t_index[s : s + per], b_index[s : s + per]
                chosen = position[b] <= t.view(-1, 1, 1, 1)
                parts.append(batch.forward(torch.where(chosen, fill[b], x[b])))
            batch.cache[key] = torch.cat(parts)
        logits = batch.cache[key]  # [P, K]
        target = batch.target.to(x.device)[b_index].view(-1, 1)
        picked = batch.probabilities(logits).gather(1, target).squeeze(1)
        clean = batch.pick(batch.probabilities(batch.clean_logits()))
        ratios = torch.zeros(steps, batch.size, dtype=torch.float64, device=x.device)
        ratios[t_index, b_index] = (picked / clean[b_index]).double()
        ratios = ratios.T  # [B, S], zero past each image's last segment
        last = ratios.gather(1, (count - 1).clamp(min=0).view(-1, 1)).squeeze(1)
        area = ratios.sum(1) - ratios[:, 0] / 2 - last / 2  # np.trapz(dx=1) over the n points
        score = count.to(area.dtype) - area
        return {"score": torch.where(count > 1, score, torch.full_like(score, float("nan")))}

    def quantus_reference(self):
        """``(quantus.IROF, call kwargs)`` with these settings: per-image scores
        (``return_aggregate=False``), one image per Quantus batch (see above)."""
        import quantus
        from quantus.functions.perturb_func import baseline_replacement_by_mask

        quantus_numpy_compat()

        def replace_segment(arr, mask, **kwargs):
            # Quantus 0.6's IROF passes a one-channel mask [B, 1, H, W], which its own
            # replacement function rejects for colour images; the mask covers all channels
            return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

        metric = quantus.IROF(segmentation_method="slic", perturb_func=replace_segment,
                              perturb_baseline=self.baseline, abs=False,
                              normalise=True, return_aggregate=False, disable_warnings=True,
                              display_progressbar=False)
        return metric, {"softmax": True, "channel_first": True, "batch_size": 1}
