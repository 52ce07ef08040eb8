"""``sufficiency`` (Dasgupta, Frost & Moshkovitz, ICML 2022), as Quantus 0.6 computes it.

Local sufficiency asks whether an explanation is enough to tell the prediction: among the other
images whose explanations are close to this one's, the share that the model assigns the same
predicted class. Within a group of images, the distance between two maps is the standardised
Euclidean distance (``seuclidean``: each pixel's squared difference divided by that pixel's
variance over the group, as ``scipy``'s ``cdist`` estimates it on the group stacked twice,
``ddof=1``), the distance matrix is divided by its largest entry, and two images are neighbours
when their distance is at most ``threshold`` (default 0.6). An image's score is the fraction of
its neighbours (itself excluded) predicted as the same class (``argmax`` of the clean logits);
0 when it has no neighbour, as in Quantus. Higher is better. No perturbed image is evaluated:
the clean logits are shared with the other metrics of a suite.

Quantus pre-processes the maps with ``normalise=True, abs=True`` (defaults kept; the
standardised distance divided by its maximum does not depend on a global scale, so only ``abs``
matters). Quantus's ``distance_func`` names a ``scipy`` ``cdist`` metric, but it always passes the
variance argument ``V``, which only ``seuclidean`` accepts, so that is the one distance here.

The score depends on which images are compared. Quantus compares the images of each of its
batches (``batch_size=64`` by default); ``group_size`` (default 64) does the same inside the
harness's batch: consecutive groups of 64 images (the last one smaller), so with an evaluation
batch that is a multiple of 64 the groups are exactly Quantus's on the same image order.

One deviation, in a degenerate case only: a pixel whose value is the same in every map of the
group has zero variance; ``scipy`` then divides 0 by 0, every distance of the group is NaN and
every score 0. Here such pixels are left out of the sum (they add no difference),
so maps with a shared constant region (a zero border, say) are still compared.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import preprocess_attributions
from interpbench.metrics.base import Batch, Metric


def standardised_distances(maps: torch.Tensor) -> torch.Tensor:
    """Pairwise standardised Euclidean distances ``[G, G]`` between the rows of ``maps [G, F]``
    (float64); pixels of zero variance are left out."""
    maps = maps.to(torch.float64)
    # scipy's cdist estimates the variances on its two inputs stacked: here the group twice
    variance = torch.cat([maps, maps]).var(dim=0, unbiased=True)
    keep = variance > 0
    maps = maps[:, keep] / variance[keep].sqrt()
    return torch.cdist(maps, maps, compute_mode="donot_use_mm_for_euclid_dist")  # exact differences


def local_sufficiency(maps: torch.Tensor, predicted: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scores ``[G]`` of one group: ``maps [G, F]``, predicted classes ``[G]``."""
    distances = standardised_distances(maps)
    peak = distances.abs().max()
    if peak > 0:
        distances = distances / peak
    near = distances <= threshold
    near.fill_diagonal_(False)
    same = predicted.view(-1, 1) == predicted.view(1, -1)
    count = near.sum(1)
    agree = (near & same).sum(1)
    return torch.where(count > 0, agree / count.clamp(min=1), torch.zeros_like(count)).to(torch.float64)


@METRICS.register("sufficiency")
class Sufficiency(Metric):
    name = "sufficiency"

    def __init__(self, threshold: float = 0.6, abs: bool = True, normalise: bool = True,
                 group_size: int = 64) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0 (a share of the largest distance), got {threshold!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2 (images compared together), got {group_size!r}")
        super().__init__(threshold=threshold, abs=abs, normalise=normalise, group_size=group_size)
        self.threshold, self.group_size = float(threshold), group_size
        self.abs, self.normalise = bool(abs), bool(normalise)

    @property
    def higher_is_better(self) -> bool:
        return True

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        maps = preprocess_attributions(batch.saliency, normalise=self.normalise, abs=self.abs)
        maps = maps.reshape(batch.size, -1)
        predicted = batch.clean_logits().argmax(-1)
        scores = [local_sufficiency(maps[s : s + self.group_size], predicted[s : s + self.group_size],
                                    self.threshold)
                  for s in range(0, batch.size, self.group_size)]
        return {"score": torch.cat(scores)}

    def quantus_reference(self) -> Tuple[Any, Dict[str, Any]]:
        """Quantus 0.6's ``Sufficiency`` with these settings (one score per image); its
        ``batch_size`` is our ``group_size``."""
        import quantus

        metric = quantus.Sufficiency(threshold=self.threshold, distance_func="seuclidean",
                                     abs=self.abs, normalise=self.normalise, return_aggregate=False,
                                     disable_warnings=True, display_progressbar=False)
        return metric, {"batch_size": self.group_size}
