"""``road``: RemOve And Debias (Rong et al., ICML 2022), as Quantus 0.6 computes it (``ROAD``).

For each percentage ``p`` (default 1, 3, ..., 99), the ``k = int(H * W * p / 100)`` most salient
pixels (most relevant first, "MoRF") are removed and replaced by a noisy linear imputation: each
removed pixel takes the weighted mean of its in-image 8-neighbours (weight 1/6 for the four
axis neighbours, 1/12 for the four diagonal ones), removed neighbours being unknowns themselves,
which makes one sparse linear system per image and percentage (all channels share its matrix);
Gaussian noise of standard deviation ``noise`` (default 0.01) is then added to the imputed
values. The curve records, per image, whether the model still predicts the explained class
(``batch.target``, Quantus's ``y_batch``) on each imputed image; a faithful map destroys the
evidence first, so the curve falls fast and lower is better. The per-image score is the mean of
the curve over the percentages (an area under the curve on the equally spaced percentages).

Quantus returns, for each percentage, the accuracy averaged over the images (a dict); that is
the mean over images of this metric's curve (``curve_x`` holds the percentages as fractions).

The solve. Quantus builds a ``scipy`` sparse system per image and percentage and solves it on
the CPU. Here all systems of a batch are solved at once in float64 on the model's device, as
block-tridiagonal systems: ordering the unknowns by image row, each row couples only to the
rows above and below, so a block LU (block Thomas) elimination over the ``H`` rows, batched
over every image and percentage, gives the exact solution. Known pixels enter the same grid as
identity rows, which keeps the matrix symmetric positive definite (Cholesky per block). Its cost
grows as ``H * W**3`` per system, small for the 32-pixel images this harness runs on the CPU.

Differences from Quantus 0.6, both forced:

- Quantus 0.6 ranks the channel-broadcast attribution (``3 * H * W`` entries) but indexes the
  ``H * W`` pixels with that ranking, so its ``ROAD`` raises an ``IndexError`` on every RGB image
  (it works on one-channel images). Here pixels are ranked by the map (``Batch.rank``) and
  removed in all channels, as in the ROAD paper. ``quantus_reference`` returns Quantus's ``ROAD``
  with only that ranking corrected; the tests show it equals the unmodified class on one-channel
  images.
- The noise is drawn from torch (seeded by ``seed`` and ``k``, so a percentage gets the same
  noise whatever list it is in), not from numpy's global RNG; the tests inject Quantus's draws.

Ties (``ties``, see :mod:`interpbench.metrics.base`): ``"random"`` (default) removes tied pixels
in a random order seeded by the image (no positional bias); ``"index"`` in pixel order, top rows
first (earlier versions); ``"quantus"`` in the order of numpy's ``argsort`` of the negated map
normalised as Quantus normalises it (the array the corrected class sorts, and Quantus's own ROAD
on one-channel images). Equality with ``quantus_reference`` (its noise fed to ours in the tests):
under ``"quantus"`` on any maps, ties included; under ``"random"`` and ``"index"`` only on maps
without ties among the pixels a percentage cuts through. Quantus's ``abs=False, normalise=True``
defaults change no ranking of the raw map, so they are not parameters. Percentages keep Quantus's defaults at any image size: at 32 x 32 the first step
removes 10 pixels. Each percentage's logits are cached under ``("road", noise, seed, ties, k)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, check_ties

AXIAL, DIAGONAL = 1.0 / 6.0, 1.0 / 12.0
STENCIL = ((AXIAL, (0, 1)), (AXIAL, (0, -1)), (AXIAL, (1, 0)), (AXIAL, (-1, 0)),
           (DIAGONAL, (1, 1)), (DIAGONAL, (1, -1)), (DIAGONAL, (-1, 1)), (DIAGONAL, (-1, -1)))
SOLVER_BYTES = 256 * 2 ** 20  # working memory of one chunk of systems in the block elimination


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j u[neighbour j]`` over the in-image 8-neighbours of each pixel of ``u [..., H, W]``."""
    h, w = u.shape[-2:]
    padded = torch.nn.functional.pad(u, (1, 1, 1, 1))
    out = torch.zeros_like(u)
    for weight, (dy, dx) in STENCIL:
        out += weight * padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def _times_tridiagonal(m: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor,
                       lower: torch.Tensor) -> torch.Tensor:
    """``m @ T`` for ``T`` tridiagonal (``T[c, c] = diag``, ``T[c, c+1] = upper``, ``T[c+1, c] = lower``)."""
    out = m * diag.unsqueeze(-2)
    out[..., 1:] += m[..., :-1] * upper.unsqueeze(-2)
    out[..., :-1] += m[..., 1:] * lower.unsqueeze(-2)
    return out


def _tridiagonal_transposed_times(m: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor,
                                  lower: torch.Tensor) -> torch.Tensor:
    """``T^T @ m`` for the same ``T``."""
    out = m * diag.unsqueeze(-1)
    out[..., 1:, :] += m[..., :-1, :] * upper.unsqueeze(-1)
    out[..., :-1, :] += m[..., 1:, :] * lower.unsqueeze(-1)
    return out


def _solve_chunk(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Linear imputation of ``x [S, C, H, W]`` (float64) at ``removed [S, H, W]``, no noise."""
    s, _, h, w = x.shape
    r = removed.to(x.dtype)
    weight_sum = _neighbour_sum(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))[0, 0]
    # Grid matrix M (symmetric positive definite): removed pixel i: M_ii = sum of its in-image
    # neighbour weights, M_ij = -w_ij for removed neighbours j; known pixel: identity row.
    diag = torch.where(removed, weight_sum.expand_as(r), torch.ones_like(r))  # [S, H, W]
    horizontal = -AXIAL * r[:, :, :-1] * r[:, :, 1:]  # coupling (row, c) - (row, c+1)
    # coupling of row i to row i+1: (c, c) vertical, (c, c+1) and (c+1, c) diagonal
    vertical = -AXIAL * r[:, :-1] * r[:, 1:]
    down_right = -DIAGONAL * r[:, :-1, :-1] * r[:, 1:, 1:]
    down_left = -DIAGONAL * r[:, :-1, 1:] * r[:, 1:, :-1]
    # right-hand side: removed pixels get the weighted sum of their known neighbours
    known = x * (1.0 - r).unsqueeze(1)
    rhs = torch.where(removed.unsqueeze(1), _neighbour_sum(known), x).permute(0, 2, 3, 1)  # [S, H, W, C]

    couplings, partial = [], []  # C_i = S_i^-1 E_i and g_i = S_i^-1 (b_i - E_{i-1}^T g_{i-1})
    for row in range(h):
        block = torch.diag_embed(diag[:, row]) + torch.diag_embed(horizontal[:, row], 1) \
            + torch.diag_embed(horizontal[:, row], -1)
        b = rhs[:, row]
        if row > 0:
            below = (vertical[:, row - 1], down_right[:, row - 1], down_left[:, row - 1])
            block = block - _tridiagonal_transposed_times(couplings[-1], *below)
            b = b - _tridiagonal_transposed_times(partial[-1], *below)
        factor, _ = torch.linalg.cholesky_ex(block)
        inverse = torch.cholesky_inverse(factor)
        partial.append(inverse @ b)
        if row < h - 1:
            couplings.append(_times_tridiagonal(inverse, vertical[:, row], down_right[:, row],
                                                down_left[:, row]))
    rows = [partial[-1]]
    for row in range(h - 2, -1, -1):
        rows.append(partial[row] - couplings[row] @ rows[-1])
    return torch.stack(rows[::-1], dim=1).permute(0, 3, 1, 2)


def linear_imputation(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """ROAD's linear imputation (without noise) of images ``x [S, C, H, W]`` at the pixels
    ``removed [S, H, W]`` (bool, all channels), solved exactly in float64; returns float64.

    Each removed pixel equals the weighted mean (axial 1/6, diagonal 1/12, renormalised over
    the in-image neighbours) of its 8-neighbours; known pixels keep their values. At least one
    pixel of each image must be known.
    """
    if x.dim() != 4 or removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"expected images [S, C, H, W] and a mask [S, H, W]; got {tuple(x.shape)} "
                         f"and {tuple(removed.shape)}")
    removed = removed.bool()
    if bool(removed.flatten(1).all(1).any()):
        raise ValueError("every image needs at least one known pixel to impute from; a mask removes all")
    x = x.to(torch.float64)
    s, _, h, w = x.shape
    chunk = max(1, SOLVER_BYTES // (8 * h * w * w * 3))
    return torch.cat([_solve_chunk(x[i : i + chunk], removed[i : i + chunk]) for i in range(0, s, chunk)])


@METRICS.register("road")
class ROAD(Metric):
    name = "road"

    def __init__(self, percentages: Optional[Sequence[float]] = None, noise: float = 0.01,
                 seed: int = 0, ties: str = "random") -> None:
        if percentages is not None:
            try:
                percentages = [float(p) for p in percentages]
            except (TypeError, ValueError):
                raise ValueError(f"percentages must be a list of numbers in (0, 100); got {percentages!r}") from None
            if not percentages or any(not 0 < p < 100 for p in percentages):
                raise ValueError(f"percentages must be a non-empty list of numbers in (0, 100); got {percentages}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"noise must be a standard deviation >= 0, got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        check_ties(ties)
        super().__init__(percentages=percentages, noise=noise, seed=seed, ties=ties)
        self.percentages = list(range(1, 100, 2)) if percentages is None else percentages
        self.noise, self.seed, self.ties = float(noise), seed, ties

    @property
    def higher_is_better(self) -> bool:
        return False

    @property
    def curve_x(self) -> List[float]:
        return [round(p / 100, 6) for p in self.percentages]

    def counts(self, num_pixels: int) -> List[int]:
        """Pixels removed at each percentage, as Quantus counts them."""
        return [int(num_pixels * p / 100) for p in self.percentages]

    def draw_noise(self, k: int, batch: Batch) -> torch.Tensor:
        """Noise ``[B, C, H, W]`` (float64) added to the imputed pixels when ``k`` are removed."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        draw = torch.randn(batch.x.shape, generator=generator, dtype=torch.float64)
        return (self.noise * draw).to(batch.x.device)

    def imputed(self, batch: Batch, counts: Sequence[int]) -> torch.Tensor:
        """The noisy imputed images ``[len(counts), B, C, H, W]`` (in the images' dtype)."""
        rank = batch.rank(descending=True, ties=self.ties).view(batch.size, *batch.x.shape[-2:])
        removed = torch.stack([rank < k for k in counts])  # [P, B, H, W]
        x = batch.x.unsqueeze(0).expand(len(counts), *batch.x.shape)
        solved = linear_imputation(x.reshape(-1, *batch.x.shape[1:]), removed.flatten(0, 1))
        solved = solved.view(len(counts), *batch.x.shape)
        noise = torch.stack([self.draw_noise(k, batch) for k in counts])
        images = torch.where(removed.unsqueeze(2), solved + noise, x.to(torch.float64))
        return images.to(batch.x.dtype)

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        counts = self.counts(batch.num_pixels)
        keys = [("road", self.noise, self.seed, self.ties, k) for k in counts]
        todo = sorted({k for k, key in zip(counts, keys) if key not in batch.cache})
        group = max(1, batch.chunk // batch.size)  # percentages imputed and run together
        for start in range(0, len(todo), group):
            part = todo[start : start + group]
            for k, logits in zip(part, batch.forward(self.imputed(batch, part))):
                batch.cache[("road", self.noise, self.seed, self.ties, k)] = logits
        logits = torch.stack([batch.cache[key] for key in keys])  # [P, B, K]
        curve = (logits.argmax(-1) == batch.target.to(logits.device).view(1, -1)).to(torch.float64).T
        return {"score": curve.mean(1), "curve": curve.contiguous()}

    def quantus_reference(self) -> Tuple[Any, Dict[str, Any]]:
        """Quantus 0.6's ``ROAD`` with these settings, ranking pixels rather than the broadcast
        channels (the one change that lets it run on RGB images; see the module docstring).

        It returns ``{percentage: accuracy over the images}`` (the mean of our curve over images);
        its noise comes from numpy's global RNG.
        """
        return _pixel_road_class()(percentages=list(self.percentages), noise=self.noise,
                                   disable_warnings=True, display_progressbar=False), {}


def _pixel_road_class() -> type:
    """A subclass of ``quantus.ROAD`` whose batch step ranks the ``H * W`` pixels of the map."""
    import numpy as np
    import quantus

    class PixelROAD(quantus.ROAD):
        def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
            pixels = a_batch.reshape(a_batch.shape[0], -1)  # the map [B, 1, H, W], one entry per pixel
            if pixels.shape[1] != x_batch.shape[-2] * x_batch.shape[-1]:
                raise ValueError("PixelROAD expects one attribution per pixel ([B, 1, H, W])")
            order = np.argsort(-pixels, axis=1)
            hits = []
            for p in self.percentages:
                chosen = order[:, : int(self.a_size * p / 100)]
                perturbed = np.stack([self.perturb_func(arr=image, indices=index)
                                      for image, index in zip(x_batch, chosen)])
                inputs = model.shape_input(perturbed, x_batch.shape, channel_first=True, batched=True)
                hits.append(y_batch == np.argmax(model.predict(inputs), axis=-1))
            return [np.stack(hits, axis=1).astype(int)]

    return PixelROAD
