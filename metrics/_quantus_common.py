"""Helpers shared by the metrics that follow Quantus 0.6's definitions (not a metric itself).

- :func:`preprocess_attributions`: Quantus's attribution pre-processing. With ``normalise=True``
  the maps are divided by the largest absolute value over the whole batch passed in (Quantus's
  default ``normalise_by_max`` reduces over every axis, the batch axis included; an all-zero batch
  is left as it is); then, with ``abs=True``, the absolute value is taken (normalise first, as
  Quantus does). ``per_image=True`` divides each map by its own maximum instead, which makes a
  score independent of the other images in the batch (rank-based metrics do not depend on it).
- :func:`quantus_attributions` (defined in :mod:`interpbench.metrics.base`, which ranks with it
  under ``ties="quantus"``): the attribution array Quantus ranks, as numpy: the maps
  ``[B, 1, H, W]`` in their own dtype, ``normalise_by_max`` over the batch, then ``abs``,
  broadcast over the channels and flattened per image (channel-first: ``c * H * W + pixel``).
- :func:`quantus_group_sums`: Quantus's per-step attribution sums (float32 numpy sums over each
  step's features, in Quantus's order), which decide Spearman ranks where float64 sums would not.
- :func:`baseline_value`: the fill values Quantus's ``get_baseline_value`` gives for a named
  baseline, computed on our side in torch: ``"black"`` / ``"white"`` are the image's minimum /
  maximum over all channels and pixels (not 0 / 1), ``"mean"`` its mean over all channels and
  pixels, ``"uniform"`` a draw from U(low, high) (one per image, or one per image and channel,
  depending on which Quantus perturbation function is mirrored), a number is used as it is.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from interpbench.metrics.base import divide_or, quantus_attributions  # noqa: F401 (re-exported)

BASELINES = ("black", "white", "mean", "uniform")


def preprocess_attributions(a: torch.Tensor, normalise: bool = True, abs: bool = False,
                            per_image: bool = False) -> torch.Tensor:
    """Quantus's ``normalise_by_max`` (over the whole batch unless ``per_image``) then ``abs``.

    ``a``: attributions ``[B, ...]``. Returns a new tensor of the same shape and dtype.
    """
    if normalise:
        if per_image:
            peak = a.reshape(a.shape[0], -1).abs().amax(dim=1)
            peak = torch.where(peak == 0, torch.ones_like(peak), peak)  # all-zero maps stay zero
            a = a / peak.view(-1, *([1] * (a.dim() - 1)))
        elif bool((a != 0).any()):
            a = a / a.abs().max()
    if abs:
        a = a.abs()
    return a


def quantus_group_sums(values: np.ndarray, rank: torch.Tensor, step: int) -> torch.Tensor:
    """Quantus's attribution sum of each step ``[B, T]`` (float64 holding float32 sums).

    ``values [B, N]``: the array Quantus ranks (:func:`quantus_attributions`); ``rank [B, N]``:
    its ranking; step ``t`` holds the features ranked ``t * step`` to ``(t + 1) * step - 1``, summed
    by numpy in that order and dtype, as Quantus sums them.
    """
    order = torch.argsort(rank.cpu(), dim=1).numpy()
    rows = np.arange(values.shape[0])[:, None]
    sums = [values[rows, order[:, s : s + step]].sum(axis=-1) for s in range(0, values.shape[1], step)]
    return torch.from_numpy(np.stack(sums, axis=1).astype(np.float64)).to(rank.device)


def baseline_value(name: Union[str, float, int], x: torch.Tensor, per_channel: bool = False,
                   uniform_low: float = 0.0, uniform_high: float = 1.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The baseline Quantus names ``name`` for images ``x [B, C, H, W]``, shaped ``[B, C', 1, 1]``.

    ``C'`` is ``C`` for ``"uniform"`` with ``per_channel=True`` (one draw per image and channel,
    as Quantus's per-image ``baseline_replacement_by_indices`` on channel-wide pixel indices)
    and 1 otherwise (one draw per image, as its batched ``batch_baseline_replacement_by_indices``).
    The statistics of ``"black"``, ``"white"`` and ``"mean"`` are taken over all channels and
    pixels of each image. Uniform draws use ``generator`` (torch's global RNG when None).
    """
    if isinstance(name, bool) or not isinstance(name, (str, float, int)):
        raise ValueError(f"baseline must be a number or one of {', '.join(BASELINES)}; got {name!r}")
    if x.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W]; got {tuple(x.shape)}")
    b, c = x.shape[:2]
    if not isinstance(name, str):
        return torch.full((b, 1, 1, 1), float(name), dtype=x.dtype, device=x.device)
    flat = x.reshape(b, -1).double()  # statistics in float64, then rounded to x's dtype
    key = name.lower()
    if key == "black":
        value = flat.amin(dim=1)
    elif key == "white":
        value = flat.amax(dim=1)
    elif key == "mean":
        value = flat.mean(dim=1)
    elif key == "uniform":
        shape = (b, c if per_channel else 1)
        draw = torch.rand(shape, generator=generator, dtype=torch.float64,
                          device=generator.device if generator is not None else "cpu")
        value = (uniform_low + (uniform_high - uniform_low) * draw).to(x)
        return value.view(b, -1, 1, 1)
    else:
        raise ValueError(f"unknown baseline '{name}'; valid baselines: a number or "
                         f"{', '.join(BASELINES)}")
    return value.to(x.dtype).view(b, 1, 1, 1)


def pearson(a: torch.Tensor, b: torch.Tensor, constant: float = float("nan")) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along the last axis (``[..., T]`` -> ``[...]``,
    float64); ``constant`` where a series is constant (default NaN, as scipy's ``pearsonr``)."""
    a, b = a.double(), b.double()
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return divide_or((a * b).sum(dim=-1), a.norm(dim=-1) * b.norm(dim=-1), constant).clamp(-1.0, 1.0)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) of each row of ``values [B, N]`` (float64), ties sharing their average rank
    (scipy's ``rankdata``); one sort per row."""
    b, n = values.shape
    order = torch.argsort(values, dim=1, stable=True)
    ordered = values.gather(1, order)
    new_group = torch.ones_like(ordered, dtype=torch.bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = new_group.long().cumsum(1) - 1  # [B, N] group id in sorted order
    positions = torch.arange(1, n + 1, device=values.device, dtype=torch.float64).expand(b, n)
    sums = torch.zeros(b, n, dtype=torch.float64, device=values.device).scatter_add_(1, group, positions)
    counts = torch.zeros(b, n, dtype=torch.float64, device=values.device).scatter_add_(
        1, group, torch.ones_like(positions))
    mean_rank = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor, constant: float = float("nan")) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` and ``b`` (``[B, N]`` -> ``[B]``);
    ``constant`` where a row is constant."""
    return pearson(average_ranks(a.double()), average_ranks(b.double()), constant)


def stacked_logits(batch, key, count: int, build) -> torch.Tensor:
    """Logits ``[count, B, K]`` of ``count`` perturbed copies of the batch, cached under ``key``.

    ``build(indices)`` returns the images ``[len(indices), B, C, H, W]`` of those perturbations;
    they are built and run a chunk at a time (about ``batch.chunk`` images), so a large set of
    perturbations never sits in memory at once.
    """
    if key not in batch.cache:
        per = max(1, batch.chunk // max(1, batch.size))
        parts = [batch.forward(build(list(range(s, min(s + per, count)))))
                 for s in range(0, count, per)]
        batch.cache[key] = (torch.cat(parts) if parts else
                            batch.x.new_zeros(0, batch.size, batch.model.num_classes))
    return batch.cache[key]


def quantus_numpy_compat() -> None:
    """Let Quantus 0.6 run on numpy 2.4: its AUC helper calls ``np.trapz``, which numpy 2.4 removed;
    the alias points to the same trapezoidal rule (``np.trapezoid``). Called by ``quantus_reference``."""
    import numpy as np

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
