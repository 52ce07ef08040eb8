"""``faithfulness_correlation`` (Bhatt et al., IJCAI 2020), as Quantus 0.6 computes it.

For each image, ``nr_runs`` (default 100) random subsets of ``subset_size`` input features are
drawn, a feature being one channel of one pixel (``C * H * W`` of them, as Quantus flattens the
image); each subset is replaced by a baseline (default ``"black"``: the image's minimum over all
channels and pixels, Quantus's meaning of black, not 0) and the model's logit of the explained
class (``batch.target``) is recorded. The score is Pearson's correlation, over the runs, between
the drop of that logit (clean minus perturbed) and the sum of the attribution over the subset
(the map is broadcast to every channel, as Quantus does). It lies in [-1, 1]; higher is better.
It is NaN where either series is constant (as ``scipy.stats.pearsonr`` gives).

Quantus's attribution pre-processing (``normalise=True``: divide by the batch's largest
magnitude; ``abs=False``) is applied through ``_quantus_common``; a positive scale does not change
a correlation, so only ``abs`` matters. Quantus uses logits here (``softmax=False``).

Default changed for small images: Quantus draws ``subset_size=224`` features, one row's worth
on the 224 x 224 images it was designed for (0.15 % of the features). ``subset_size=None``
(default) keeps that rule at any size: the image width, 224 at 224 pixels (Quantus's default
exactly) and 32 at 32 x 32 (1 % of the 3,072 features); a fixed 224 would perturb 7 % of a
32-pixel image per run.

Random draws. Subsets come from a torch generator seeded by ``seed`` at every call (so a batch's
scores are reproducible; they depend on the batch's composition, as Quantus's do on numpy's
global RNG state). Quantus draws from numpy's global RNG; the tests feed Quantus's draws to
``correlation`` and get its numbers. The perturbed logits are cached under
``("faithfulness_correlation", seed, nr_runs, subset_size, baseline)``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    BASELINES,
    baseline_value,
    pearson,
    preprocess_attributions,
)
from interpbench.metrics.base import Batch, Metric

DETERMINISTIC_BASELINES = tuple(b for b in BASELINES if b != "uniform")


def check_baseline(baseline: Union[str, float, int]) -> None:
    if isinstance(baseline, bool) or not (isinstance(baseline, (int, float))
                                          or baseline in DETERMINISTIC_BASELINES):
        raise ValueError(f"unknown perturb_baseline {baseline!r}; valid baselines: a number or "
                         f"{', '.join(DETERMINISTIC_BASELINES)}")


@METRICS.register("faithfulness_correlation")
class FaithfulnessCorrelation(Metric):
    name = "faithfulness_correlation"

    def __init__(self, nr_runs: int = 100, subset_size: Optional[int] = None,
                 perturb_baseline: Union[str, float] = "black", abs: bool = False,
                 normalise: bool = True, seed: int = 0) -> None:
        if isinstance(nr_runs, bool) or not isinstance(nr_runs, int) or nr_runs < 2:
            raise ValueError(f"nr_runs must be an integer >= 2 (a correlation needs two runs), got {nr_runs!r}")
        if subset_size is not None and (isinstance(subset_size, bool) or not isinstance(subset_size, int)
                                        or subset_size < 1):
            raise ValueError(f"subset_size must be a positive number of features or None (the image width), "
                             f"got {subset_size!r}")
        check_baseline(perturb_baseline)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        super().__init__(nr_runs=nr_runs, subset_size=subset_size, perturb_baseline=perturb_baseline,
                         abs=abs, normalise=normalise, seed=seed)
        self.nr_runs, self.subset_size, self.perturb_baseline = nr_runs, subset_size, perturb_baseline
        self.abs, self.normalise, self.seed = bool(abs), bool(normalise), seed

    @property
    def higher_is_better(self) -> bool:
        return True

    def size_for(self, x: torch.Tensor) -> int:
        """The subset size for images ``x``: ``subset_size``, or the image width when None."""
        size = x.shape[-1] if self.subset_size is None else self.subset_size
        features = x[0].numel()
        if size >= features:
            raise ValueError(f"subset_size {size} must be smaller than the {features} features of an image")
        return size

    def draw_subsets(self, batch: Batch) -> torch.Tensor:
        """Random feature subsets ``[nr_runs, B, subset_size]`` (indices into ``C * H * W``)."""
        generator = torch.Generator().manual_seed(self.seed)
        size, features = self.size_for(batch.x), batch.x[0].numel()
        subsets = [torch.rand(batch.size, features, generator=generator).topk(size, dim=1).indices
                   for _ in range(self.nr_runs)]
        return torch.stack(subsets).to(batch.x.device)

    def perturbed_logits(self, batch: Batch, subsets: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, B, K]`` of the images with each run's subset set to the baseline."""
        flat = batch.x.reshape(batch.size, -1)
        fill = baseline_value(self.perturb_baseline, batch.x).reshape(batch.size, 1).to(flat)
        runs = max(1, batch.chunk // batch.size)
        logits = []
        for start in range(0, subsets.shape[0], runs):
            part = subsets[start : start + runs]  # [r, B, k]
            images = flat.unsqueeze(0).repeat(part.shape[0], 1, 1)
            images.scatter_(2, part, fill.unsqueeze(0).expand(part.shape[0], -1, part.shape[2]))
            logits.append(batch.forward(images.view(part.shape[0], *batch.x.shape)))
        return torch.cat(logits)

    def correlation(self, batch: Batch, subsets: torch.Tensor, key: Any = None) -> torch.Tensor:
        """Per-image scores for the given ``subsets [R, B, k]``; logits cached under ``key`` if given."""
        if key is None:
            perturbed = self.perturbed_logits(batch, subsets)
        else:  # built and run in chunks of runs, cached whole
            if key not in batch.cache:
                batch.cache[key] = self.perturbed_logits(batch, subsets)
            perturbed = batch.cache[key]
        clean = batch.pick(batch.clean_logits())  # [B]
        drops = clean.unsqueeze(0) - batch.pick(perturbed)  # [R, B]
        a = preprocess_attributions(batch.saliency, normalise=self.normalise, abs=self.abs)
        a = a.unsqueeze(1).expand_as(batch.x).reshape(batch.size, -1)  # broadcast to every channel
        sums = a.to(torch.float64).unsqueeze(0).expand(subsets.shape[0], -1, -1).gather(2, subsets).sum(2)
        return pearson(sums.T, drops.T)

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        key = ("faithfulness_correlation", self.seed, self.nr_runs, self.size_for(batch.x),
               self.perturb_baseline)
        return {"score": self.correlation(batch, self.draw_subsets(batch), key)}

    def quantus_reference(self, image_width: int = 32) -> Tuple[Any, Dict[str, Any]]:
        """Quantus 0.6's ``FaithfulnessCorrelation`` with these settings (one score per image).

        ``image_width`` resolves ``subset_size=None`` (default 32, the harness's CPU images).
        """
        import quantus

        size = image_width if self.subset_size is None else self.subset_size
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=self.nr_runs, subset_size=size, perturb_baseline=self.perturb_baseline,
            abs=self.abs, normalise=self.normalise, return_aggregate=False,
            disable_warnings=True, display_progressbar=False)
        return metric, {"softmax": False}
