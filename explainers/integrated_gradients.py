"""``integrated_gradients``: Integrated Gradients (Sundararajan et al., ICML 2017) through captum.

``IG_i(x) = (x_i - x'_i) * int_0^1 d logit_c(x' + a (x - x')) / dx_i da`` with the black image
``x' = 0`` (pixel space; the models normalise inside) as the baseline, the integral by captum's
default Gauss-Legendre rule with ``n_steps = 50`` points, and ``internal_batch_size`` bounding how
many scaled images go through one forward and backward pass. Batched over images.

The map sums the attributions over the three channels, keeping their sign (``sign="signed"``,
the default): then the map sums to ``logit_c(x) - logit_c(0)`` up to the integration error
(completeness). ``sign="absolute"`` takes ``|sum|``, ``sign="positive"`` keeps the positive part
(``max(sum, 0)``), for metrics that read only evidence for the class.
"""
from __future__ import annotations

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel

SIGNS = ("signed", "absolute", "positive")
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


@EXPLAINERS.register("integrated_gradients")
class IntegratedGradients(Explainer):
    name = "integrated_gradients"

    def __init__(self, n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: int = 512,
                 sign: str = "signed") -> None:
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"integrated_gradients n_steps must be a positive integer, got {n_steps!r}")
        if method not in METHODS:
            raise ValueError(f"integrated_gradients method must be one of {', '.join(METHODS)}; got {method!r}")
        if not isinstance(internal_batch_size, int) or internal_batch_size < 1:
            raise ValueError("integrated_gradients internal_batch_size must be a positive integer, "
                             f"got {internal_batch_size!r}")
        if sign not in SIGNS:
            raise ValueError(f"integrated_gradients sign must be one of {', '.join(SIGNS)}; got {sign!r}")
        self.n_steps, self.method = n_steps, method
        self.internal_batch_size, self.sign = internal_batch_size, sign

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG

        with torch.enable_grad():
            attributions = CaptumIG(model).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=self.n_steps, method=self.method,
                internal_batch_size=max(self.internal_batch_size, x.shape[0]),
            )
        maps = attributions.detach().sum(dim=1)
        if self.sign == "absolute":
            return maps.abs()
        if self.sign == "positive":
            return maps.clamp_min(0)
        return maps
