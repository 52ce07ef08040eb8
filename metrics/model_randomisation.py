"""``model_randomisation``: the cascading parameter randomisation sanity check (Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018; Quantus 0.6 calls it ``MPRT``).

A copy of the model has its layers re-initialised one at a time from the output down
(cumulatively: after step ``l`` the top ``l`` layers are random), and after each step the images
are explained again by the same explainer (``batch.explainer``, for the same classes). The
similarity between the original map (``batch.saliency``) and each new one is the Spearman rank
correlation over pixels (ties get their average rank), of the absolute values (``abs=True``),
as in Quantus's defaults. A constant map (Grad-CAM's ReLU often zeroes the whole map of a
randomised ResNet) keeps no ordering of the pixels: its similarity counts as 0, where Quantus
(scipy) returns NaN. An explanation that reflects what the model learned must change once
the weights are noise, so lower is better.

- ``curve``: the similarity after each step, ``curve_x`` = the number of layers randomised
  (1, ..., L; known once a model has been seen, since L depends on the model).
- ``score``: the similarity after the last step, when every layer is random (Quantus's
  ``return_last_correlation=True``). The mean over the curve would also count the early steps,
  where only the head is random and a map may rightly still resemble the original;
  ``skip_layers=True`` computes the fully randomised model only (the same score, one explanation
  instead of L; the curve is then that single point).
- ``flag(score)``: a warning when the fully randomised model's maps still rank the pixels like the
  original's, i.e. a similarity above ``flag_above`` (default 0.5: a rank correlation above one
  half means the map keeps most of its ordering with every weight replaced by noise, the failure
  the paper reports for Guided Backprop and similar methods). Measured on randomly initialised
  CPU-size ``fa_cnn`` and ``resnet18`` and 16 synthetic images (mean over images): an edge
  detector of the image, which ignores the model, scores 1.0; Grad-CAM 0.15 to 0.33; gradient x
  input 0.20 to 0.35; plain gradients 0.08 (FA-CNN) and 0.50 (ResNet-18, whose gradients are
  known to keep some of the image's edges).

What counts as a layer (as in Quantus): every module that has a ``reset_parameters`` method
(convolutions, linear layers, torch's norm layers), in reverse order of ``named_modules`` (the
order of definition, reversed), each re-initialised by its own ``reset_parameters`` right after
the torch seed is set to ``seed + 1``; the draws are those of Quantus for the same ``seed``, and
the global random state is restored afterwards. Torch's batch norms are reset to the identity
(weight 1, bias 0, running mean 0, variance 1). Parameters of modules without
``reset_parameters`` stay as trained: the uncentered norms' weights of the B-cos models, the
B-cosified convolutions' gains, the k-means head's prototypes (whose backbone's unused ``fc``
counts as the first layer) and CA-Stream's query; the cascade still ends with every convolution
and linear layer random. Quantus also reports the similarity of the original map to a fresh
explanation of the unchanged model; this metric does not spend that explanation.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import spearman
from interpbench.metrics.base import Batch, Metric


def randomisable_layers(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """The layers the cascade randomises, output first: modules with ``reset_parameters``."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def randomised_models(model: torch.nn.Module, seed: int, last_only: bool = False):
    """Yield ``(layer name, model copy)`` after each cumulative re-initialisation, top down."""
    randomised = copy.deepcopy(model)
    layers = randomisable_layers(randomised)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for index, (name, module) in enumerate(layers):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
            if not last_only or index == len(layers) - 1:
                yield name, randomised


@METRICS.register("model_randomisation")
class ModelRandomisation(Metric):
    name = "model_randomisation"
    needs_explainer = True

    def __init__(self, seed: int = 42, abs: bool = True, skip_layers: bool = False,
                 flag_above: float = 0.5) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not -1.0 <= float(flag_above) <= 1.0:
            raise ValueError(f"flag_above must be a correlation in [-1, 1], got {flag_above}")
        super().__init__(seed=seed, abs=abs, skip_layers=skip_layers, flag_above=flag_above)
        self.seed, self.abs, self.skip_layers, self.flag_above = seed, bool(abs), bool(skip_layers), float(flag_above)
        self._curve_x: Optional[List[float]] = None

    @property
    def higher_is_better(self) -> bool:
        return False

    @property
    def curve_x(self) -> Optional[List[float]]:
        return self._curve_x

    def flag(self, score: float) -> Optional[str]:
        if score == score and score > self.flag_above:
            return f"explanation barely changes under model randomisation (similarity {score:.2f})"
        return None

    def prepare(self, maps: torch.Tensor) -> torch.Tensor:
        maps = maps.reshape(maps.shape[0], -1)
        return maps.abs() if self.abs else maps

    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        if batch.explainer is None:
            raise ValueError("model_randomisation re-explains the images: the batch needs its explainer")
        original = self.prepare(batch.saliency)
        similarities, steps = [], []
        for step, (_, model) in enumerate(randomised_models(batch.model, self.seed, self.skip_layers), 1):
            maps = batch.explainer(model, batch.x, batch.target).detach()
            similarities.append(spearman(original, self.prepare(maps).to(original.device), constant=0.0))
            steps.append(step)
        if not similarities:
            raise ValueError(f"model '{type(batch.model).__name__}' has no layer with reset_parameters to randomise")
        curve = torch.stack(similarities, 1)
        total = len(randomisable_layers(batch.model))
        self._curve_x = [float(total)] if self.skip_layers else [float(s) for s in steps]
        return {"score": curve[:, -1], "curve": curve}

    def quantus_reference(self, explainer: Any = None) -> Tuple[Any, Dict[str, Any]]:
        """Quantus 0.6's ``MPRT`` with these settings and ``explain_func`` wrapping ``explainer``.

        Quantus (``return_last_correlation=True``) returns the last step's similarity per image,
        our ``score``; without it, a dict by layer name whose entries after ``"original"`` are
        our ``curve``'s columns. Its ``normalise=True`` divides all maps by one positive number,
        which leaves rank correlations unchanged.
        """
        import quantus

        if explainer is None:
            raise ValueError("model_randomisation's Quantus reference re-explains: pass the explainer")

        def explain_func(model, inputs, targets, **kwargs):
            x = torch.as_tensor(inputs).to(next(model.parameters()).dtype)
            with torch.enable_grad():
                maps = explainer(model, x, torch.as_tensor(targets).long())
            return maps.detach().cpu().numpy()[:, None]

        metric = quantus.MPRT(seed=self.seed, abs=self.abs, skip_layers=self.skip_layers,
                              return_last_correlation=True, layer_order="top_down",
                              disable_warnings=True, display_progressbar=False)
        return metric, {"explain_func": explain_func, "channel_first": True}
