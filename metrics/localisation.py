"""Localisation on ground-truth object masks: ``pointing_game``, ``relevance_mass``, ``relevance_rank``.

Each compares a saliency map with the object's mask (the synthetic data's masks; ``needs_masks``)
and needs no forward pass. Higher is better for all three; an empty mask gives NaN.

- ``pointing_game`` (Zhang et al., IJCV 2018; Quantus ``PointingGame``): 1 if a pixel of maximal
  saliency lies in the mask, else 0 (with tied maxima, any of them inside counts as a hit).
- ``relevance_mass`` (Arras et al., Inf. Fusion 2022; Quantus ``RelevanceMassAccuracy``): the
  saliency inside the mask over the saliency in the whole image. The default ``sign="positive"``
  takes the positive part of the map first (the share of positive saliency inside the mask), so
  negative evidence outside the object cannot push the share above 1; Quantus's default sums the
  raw values (``sign="raw"``). A map with no positive saliency gives NaN.
- ``relevance_rank`` (Arras et al.; Quantus ``RelevanceRankAccuracy``): with ``K`` the mask's
  size, the share of the ``K`` most salient pixels that lie in the mask. Pixels tied at the
  ``K``-th value are chosen by ``ties`` (see :mod:`interpbench.metrics.base`): ``"random"``
  (default) at random, seeded by the image (no positional bias); ``"index"`` lower pixel index
  first, top rows first (earlier versions); ``"quantus"`` in the order of numpy's ``argsort`` of
  the array Quantus sorts (the map after ``sign``, in its dtype, not rescaled). It equals Quantus
  under ``"quantus"`` on any maps, ties included, and under the other rules on maps without
  ties at the ``K``-th value. The pointing game needs no tie rule: any tied maximum inside the
  mask counts, as in Quantus.

``sign`` (``raw``, ``abs``, ``positive``) says what is done to the map first; Quantus's
``abs=True`` is ``sign="abs"``. Quantus also divides the maps by their largest magnitude
(``normalise=True``); all three scores are unchanged by a positive scale, so it is not done here.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, check_ties, divide_or, saliency_rank

SIGNS = ("raw", "abs", "positive")


def signed(saliency: torch.Tensor, sign: str) -> torch.Tensor:
    if sign == "abs":
        return saliency.abs()
    if sign == "positive":
        return saliency.clamp(min=0)
    return saliency


def _numpy_sign(sign: str):
    """The same transform on numpy arrays, for configuring Quantus identically."""
    import numpy as np

    return {"abs": np.abs, "positive": lambda a: np.maximum(a, 0)}.get(sign)


class _Localisation(Metric):
    needs_masks = True
    default_sign = "raw"
    quantus_class = ""

    def __init__(self, sign: str) -> None:
        if sign not in SIGNS:
            raise ValueError(f"unknown sign '{sign}'; valid signs: {', '.join(SIGNS)}")
        super().__init__(sign=sign)
        self.sign = sign

    @property
    def higher_is_better(self) -> bool:
        return True

    def masks(self, batch: Batch) -> torch.Tensor:
        if batch.masks is None:
            raise ValueError(f"metric '{self.name}' needs ground-truth masks; this batch has none "
                             f"(the synthetic data has them)")
        return batch.masks.reshape(batch.size, -1).bool()

    def quantus_reference(self) -> Tuple[Any, Dict[str, Any]]:
        """The Quantus 0.6 metric with these settings; call it with ``s_batch=masks[:, None]``.

        Quantus returns one value per image, as here (the pointing game as a bool).
        """
        import quantus

        transform = _numpy_sign(self.sign)
        metric = getattr(quantus, self.quantus_class)(
            abs=False, normalise=transform is not None, normalise_func=transform,
            disable_warnings=True, display_progressbar=False)
        return metric, {"channel_first": True}

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        masks = self.masks(batch)
        values = signed(batch.saliency, self.sign).reshape(batch.size, -1).to(torch.float64)
        score = self.score(batch, values, masks)
        empty = masks.sum(1) == 0
        return {"score": torch.where(empty, torch.full_like(score, float("nan")), score)}

    def score(self, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@METRICS.register("pointing_game")
class PointingGame(_Localisation):
    name = "pointing_game"
    quantus_class = "PointingGame"

    def __init__(self, sign: str = "raw") -> None:
        super().__init__(sign)

    def score(self, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        peak = values == values.max(1, keepdim=True).values
        return (peak & masks).any(1).to(values.dtype)


@METRICS.register("relevance_mass")
class RelevanceMass(_Localisation):
    name = "relevance_mass"
    quantus_class = "RelevanceMassAccuracy"

    def __init__(self, sign: str = "positive") -> None:
        super().__init__(sign)

    def score(self, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        inside, total = (values * masks).sum(1), values.sum(1)
        return divide_or(inside, total, float("nan"))


@METRICS.register("relevance_rank")
class RelevanceRank(_Localisation):
    name = "relevance_rank"
    quantus_class = "RelevanceRankAccuracy"

    def __init__(self, sign: str = "raw", ties: str = "random") -> None:
        check_ties(ties)
        super().__init__(sign)
        self.params["ties"] = ties
        self.ties = ties

    def score(self, batch: Batch, values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.ties == "quantus":  # the map after sign, in its own dtype, as Quantus sorts it
            a = batch.saliency.detach().cpu().numpy().reshape(batch.size, -1)
            transform = _numpy_sign(self.sign)
            a = a if transform is None else transform(a)
            rank = saliency_rank(torch.from_numpy(a), True, "quantus").to(values.device)
        elif self.sign == "raw":  # the batch's cached ranking is of the raw map
            rank = batch.rank(True, self.ties)
        else:  # abs/positive change it, so rank again
            rank = saliency_rank(values, True, self.ties, images=batch.x)
        size = masks.sum(1)
        top = rank < size.unsqueeze(1)
        return (top & masks).sum(1).to(values.dtype) / size.clamp(min=1).to(values.dtype)
