"""``infidelity`` (Yeh et al., NeurIPS 2019), as Quantus 0.6 computes it (``Infidelity``).

Infidelity is the expected squared difference between the attribution's predicted effect of a
perturbation, ``sum(a * (x - x'))``, and the model's actual change, ``f(x)_c - f(x')_c`` (logits of
the explained class ``batch.target``; Quantus's ``softmax=False``). Quantus 0.6 does not draw the
paper's Gaussian noise: for each patch size ``p`` (default ``[4]``) it lays a grid of ``p x p``
patches over the image and, visiting them row by row, replaces one more patch (all channels) by
the baseline at each step, so step ``j`` has patches ``0..j`` replaced; the loss is the mean over
the steps of the squared difference, averaged over the patch sizes. A map that predicts the
model's response gives a small loss: lower is better. The map is broadcast to every channel.

Defaults as Quantus's: ``perturb_patch_sizes=[4]`` (64 steps at 32 x 32, 3,136 at 224 x 224),
``perturb_baseline="black"`` (the image's minimum over channels and pixels; ``"white"`` its
maximum; ``"mean"`` the mean of the image as perturbed so far, which is what Quantus computes at
each step; or a number), ``normalise=False, abs=False`` (the raw map: infidelity depends on the
map's scale). Quantus repeats the whole deterministic sweep ``n_perturb_samples`` times (default
10) and averages identical numbers; it is computed once here, and ``quantus_reference`` sets
``n_perturb_samples=1``.

When ``p`` does not divide the image size, the grid is laid over the image padded as Quantus pads
it (half the remainder on each side, the larger half last) and each patch replaces the pixels it
covers; Quantus 0.6 itself fails on such sizes. Each step's logits are cached under
``("infidelity", p, baseline, j)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import baseline_value, preprocess_attributions
from interpbench.metrics.base import Batch, Metric
from interpbench.metrics.faithfulness_correlation import check_baseline
from interpbench.metrics.region_perturbation import patch_ids


@METRICS.register("infidelity")
class Infidelity(Metric):
    name = "infidelity"

    def __init__(self, perturb_patch_sizes: Union[int, Sequence[int]] = (4,),
                 perturb_baseline: Union[str, float] = "black", abs: bool = False,
                 normalise: bool = False) -> None:
        sizes = [perturb_patch_sizes] if isinstance(perturb_patch_sizes, int) else perturb_patch_sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if not sizes or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in sizes):
            raise ValueError(f"perturb_patch_sizes must be a positive integer or a non-empty list of them, "
                             f"got {perturb_patch_sizes!r}")
        check_baseline(perturb_baseline)
        super().__init__(perturb_patch_sizes=tuple(sizes), perturb_baseline=perturb_baseline,
                         abs=abs, normalise=normalise)
        self.patch_sizes: List[int] = sizes
        self.perturb_baseline, self.abs, self.normalise = perturb_baseline, bool(abs), bool(normalise)

    @property
    def higher_is_better(self) -> bool:
        return False

    def fills(self, batch: Batch, index: torch.Tensor, patches: int) -> torch.Tensor:
        """The value patch ``j`` is filled with, per image: ``[B, patches]``."""
        x = batch.x.to(torch.float64)
        if self.perturb_baseline != "mean":  # the minimum / maximum / number does not change
            return baseline_value(self.perturb_baseline, x).view(-1, 1).expand(-1, patches)
        # "mean": each step fills with the mean of the image as perturbed so far
        flat, where = x.reshape(batch.size, x.shape[1], -1), index.view(-1)
        sums = torch.zeros(batch.size, patches, dtype=x.dtype, device=x.device)
        sums.index_add_(1, where, flat.sum(1))  # each patch's sum over its pixels and channels
        sizes = torch.bincount(where, minlength=patches).to(x.dtype) * x.shape[1]
        total, count = flat.sum((1, 2)), float(flat[0].numel())
        fills = []
        for j in range(patches):
            fills.append(total / count)
            total = total - sums[:, j] + fills[-1] * sizes[j]
        return torch.stack(fills, dim=1)

    def sweep(self, batch: Batch, patch: int) -> torch.Tensor:
        """Loss ``[B]`` for one patch size."""
        index, patches = patch_ids(*batch.x.shape[-2:], patch, device=batch.x.device)
        fills = self.fills(batch, index, patches)  # [B, P] float64
        pixel_fill = fills[:, index.view(-1)].view(batch.size, 1, *index.shape)  # [B, 1, H, W]
        x = batch.x.to(torch.float64)
        # predicted effect: cumulative over the patches of sum(a * (x - fill)) within each patch
        a = preprocess_attributions(batch.saliency, normalise=self.normalise, abs=self.abs)
        effect = (a.to(torch.float64).unsqueeze(1) * (x - pixel_fill)).sum(1).reshape(batch.size, -1)
        per_patch = torch.zeros(batch.size, patches, dtype=torch.float64, device=x.device)
        per_patch.index_add_(1, index.view(-1), effect)
        predicted = per_patch.cumsum(1)  # [B, P]
        keys = [("infidelity", patch, self.perturb_baseline, j) for j in range(patches)]
        todo = [j for j, key in enumerate(keys) if key not in batch.cache]
        steps = max(1, batch.chunk // batch.size)
        filled = pixel_fill.to(batch.x.dtype)
        for start in range(0, len(todo), steps):
            part = torch.tensor(todo[start : start + steps], device=x.device)
            chosen = index.view(1, 1, 1, *index.shape) <= part.view(-1, 1, 1, 1, 1)  # [s, 1, 1, H, W]
            images = torch.where(chosen, filled.unsqueeze(0), batch.x.unsqueeze(0))
            for j, logits in zip(part.tolist(), batch.forward(images)):
                batch.cache[keys[j]] = logits
        perturbed = batch.pick(torch.stack([batch.cache[key] for key in keys]))  # [P, B]
        actual = batch.pick(batch.clean_logits()).unsqueeze(0) - perturbed
        return (actual.T.to(torch.float64) - predicted).pow(2).mean(1)

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        losses = torch.stack([self.sweep(batch, patch) for patch in self.patch_sizes])
        return {"score": losses.mean(0)}

    def quantus_reference(self) -> Tuple[Any, Dict[str, Any]]:
        """Quantus 0.6's ``Infidelity`` with these settings (one loss per image)."""
        import quantus

        metric = quantus.Infidelity(
            loss_func="mse", perturb_patch_sizes=list(self.patch_sizes), n_perturb_samples=1,
            perturb_baseline=self.perturb_baseline, abs=self.abs, normalise=self.normalise,
            return_aggregate=False, disable_warnings=True, display_progressbar=False)
        return metric, {"softmax": False}
