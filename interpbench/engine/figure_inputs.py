"""Computing, at evaluation time, what the report's model-dependent figures draw.

``run_cells`` calls :func:`store_figure_inputs` once per explained group (a trained model, an
explainer, the scored images), after the group's maps are computed; the inputs are written to
``<store>/figure_inputs/`` in the format of :mod:`interpbench.report.inputs`:

- the saliency grid (the FA-CNN paper's Figures 1 and 5): four scored test images of different
  classes (:func:`pick_images` on the scored images' labels), their labels and class names, and the
  explainer's maps of those images for their TRUE class (the cached maps explain the predicted
  class by default);
- FA-CNN's layer-by-layer morphing, for the FA-CNN family's models with the pooling head: for the
  first three classes among the scored images, the class map (the mean of the class's channels)
  and Grad-CAM (on the layer's output, no ReLU; equal to captum's ``LayerGradCam``) at every layer
  (every k-th when there are more than 12), each averaged over the class's first 32 scored images,
  and the Pearson correlation of the two. At the last layer, which feeds the pooling head, Grad-CAM
  is the class map divided by h * w (the paper's Theorem 1), so the correlation reads 1.00 there.

A group whose file exists is not recomputed; a failure is printed on one line and never fails
the cells. Cells computed before figure inputs were stored get theirs with
``python -m interpbench.engine.figure_backfill <store or sweep folder>``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from interpbench.core import Cell
from interpbench.explainers import EXPLAINERS
from interpbench.metrics._quantus_common import pearson
from interpbench.report.inputs import (
    FigureInputs,
    Morphing,
    inputs_path,
    normalised_maps,
    saliency_key,
    write_figure_inputs,
)
from interpbench.storage import git_commit, plain
from interpbench.zoo import MODELS

GRID_IMAGES = 4  # images in the saliency grid
MORPH_CLASSES = 3  # classes in the morphing figure
MORPH_MAX_IMAGES = 32  # images averaged per class
MAX_MORPH_COLUMNS = 12


# --- the saliency grid ----------------------------------------------------------------------------
def pick_images(labels: Sequence[int], count: int) -> List[int]:
    """Indices of up to ``count`` images of different classes (first of each class, in order),
    topped up with the next images when there are fewer classes."""
    picked, seen = [], set()
    for index, label in enumerate(labels):
        if int(label) not in seen:
            picked.append(index)
            seen.add(int(label))
        if len(picked) == count:
            return picked
    rest = [i for i in range(len(labels)) if i not in picked]
    return sorted(picked + rest[: count - len(picked)])


# --- FA-CNN's layer-by-layer morphing -------------------------------------------------------------
def morph_layers(depth: int, every: Optional[int] = None) -> List[int]:
    """Layers 0..depth, every ``every``-th (default: so that at most 12 are shown), always with the last."""
    every = every or max(1, math.ceil((depth + 1) / MAX_MORPH_COLUMNS))
    if every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    layers = list(range(0, depth + 1, every))
    if layers[-1] != depth:
        layers.append(depth)
    return layers


def has_pool_head(model: Any) -> bool:
    return hasattr(model, "class_maps") and getattr(model, "head", None) == "pool"


def layer_gradcams(model, x, target: int, layers: Sequence[int]):
    """FA-CNN's class map and Grad-CAM of class ``target`` at each of ``layers``, for every image.

    One forward pass keeps every layer's output X_L; one backward pass of the summed logit of
    ``target`` gives d y_c / d X_L at all layers at once (the images do not interact, so each
    image's gradient is its own). Grad-CAM at layer L is sum_k alpha_k X_L,k with alpha_k the
    spatial mean of the gradient, no ReLU: the same as captum's ``LayerGradCam`` on the module
    that outputs X_L (``model.stem`` for L = 0, ``model.layers[L - 1]`` after), which the tests
    check. Returns layer -> (class maps ``[N, h, w]``, Grad-CAM maps ``[N, h, w]``).
    """
    if not has_pool_head(model):
        raise ValueError("the morphing figure needs an FA-CNN with the pooling head (model fa_cnn)")
    if not 0 <= int(target) < model.num_classes:
        raise ValueError(f"target class {target} out of range; valid classes: 0 to {model.num_classes - 1}")
    with torch.enable_grad():
        features = model.layer_features(model.normalize(x))
        logits = model.forward_head(features[model.depth])
        grads = torch.autograd.grad(logits[:, int(target)].sum(), [features[layer] for layer in layers])
    out = {}
    for layer, grad in zip(layers, grads):
        feature = features[layer].detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        gradcam = (weights * feature).sum(dim=1)
        out[layer] = (model.class_pooled(feature)[:, int(target)], gradcam)
    return out


def morphing_maps(model, x, target: int, layers: Sequence[int]) -> Dict[int, Tuple[np.ndarray, np.ndarray, float]]:
    """Layer -> (FA-CNN class map, Grad-CAM map, their correlation), both averaged over ``x``
    and at the layer's resolution, for class ``target``."""
    out = {}
    for layer, (native, gradcam) in layer_gradcams(model, x, target, layers).items():
        native_map, gradcam_map = native.mean(0).double().cpu(), gradcam.mean(0).double().cpu()
        correlation = float(pearson(native_map.reshape(-1), gradcam_map.reshape(-1)))
        out[layer] = (native_map.numpy(), gradcam_map.numpy(), correlation)
    return out


def morphing_inputs(model, x, y, classes: Optional[Sequence[int]] = None, every: Optional[int] = None,
                    class_names: Optional[Sequence[str]] = None, max_images: int = MORPH_MAX_IMAGES) -> Morphing:
    """The morphing figure's inputs: FA-CNN's class maps and Grad-CAM at every (k-th) layer.

    ``x`` ``[N, 3, H, W]`` in [0, 1], ``y`` their labels; each class's maps are averaged over its
    first ``max_images`` images; ``classes``: default the first three present.
    """
    if not has_pool_head(model):
        raise ValueError("the morphing figure needs an FA-CNN with the pooling head (model fa_cnn)")
    y = torch.as_tensor(y)
    present = sorted({int(c) for c in y.tolist()})
    classes = present[:MORPH_CLASSES] if classes is None else [int(c) for c in classes]
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"no images of class(es) {missing}; classes present: {present}")
    layers = morph_layers(model.depth, every)
    device = next(model.parameters()).device
    native: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    gradcam: Dict[int, List[np.ndarray]] = {layer: [] for layer in layers}
    correlations: Dict[int, Dict[int, float]] = {}
    counts: Dict[int, int] = {}
    for target in classes:
        images = x[y == target][:max_images]
        counts[target] = int(images.shape[0])
        maps = morphing_maps(model, images.to(device), target, layers)
        correlations[target] = {layer: maps[layer][2] for layer in layers}
        for layer in layers:
            native[layer].append(maps[layer][0])
            gradcam[layer].append(maps[layer][1])
    names = [str(class_names[c]) if class_names else str(c) for c in classes]
    return Morphing(layers=layers, depth=int(model.depth), classes=classes, class_names=names,
                    native={layer: np.stack(v).astype(np.float32) for layer, v in native.items()},
                    gradcam={layer: np.stack(v).astype(np.float32) for layer, v in gradcam.items()},
                    correlations=correlations, images_per_class=counts)


# --- one explained group ------------------------------------------------------------------------
def figure_inputs(cell: Cell, model, images: Dict[str, torch.Tensor], dataset) -> FigureInputs:
    """The figure inputs of ``cell``'s explained group: ``images`` are ``dataset``'s scored images
    (``evaluation_images``). The explainer is a fresh one made from the cell (the group's own may
    hold state, e.g. ``random``'s generator, that its metrics read)."""
    explainer = EXPLAINERS.create(cell.explainer, **plain(cell.explainer_args))
    classes = list(getattr(dataset, "classes", None) or [])
    labels = images["y"]
    picked = pick_images(labels.tolist(), GRID_IMAGES)
    x, y = images["x"][picked], labels[picked]
    maps = explainer.explain_all(model, x, y, batch_size=len(picked)).detach().float().cpu().numpy()
    divided, scales = normalised_maps(maps)
    morphing = None
    family = MODELS.info(cell.train.model).get("family") if cell.train.model in MODELS else None
    if family == "fa_cnn" and has_pool_head(model):
        morphing = morphing_inputs(model, images["x"], labels, class_names=classes)
    meta = {
        "saliency_key": saliency_key(cell.identity()), "model": cell.train.model, "explainer": cell.explainer,
        "explainer_args": plain(cell.explainer_args), "data": str(plain(cell.train.data).get("name")),
        "seed": int(cell.train.seed), "model_key": cell.train.key(), "num_images": int(images["x"].shape[0]),
        "eval_seed": int(cell.eval_seed), "image_positions": [int(i) for i in picked],
        "labels": [int(c) for c in y.tolist()],
        "class_names": [str(classes[int(c)]) if classes else str(int(c)) for c in y.tolist()],
        "map_target": "label", "git_commit": git_commit(),
    }
    pixels = (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return FigureInputs(meta=meta, images=pixels, maps=divided, map_scales=scales, morphing=morphing)


def store_figure_inputs(cell: Cell, model, images: Dict[str, torch.Tensor], dataset, store: Path) -> Optional[Path]:
    """Write the figure inputs of ``cell``'s explained group to ``<store>/figure_inputs/`` unless
    they are there; returns the path, or None after printing why they could not be computed. The
    global random state is left as it was, so the cells' scores do not depend on this."""
    path = inputs_path(store, cell.identity())
    if path.exists():
        return path
    try:
        with torch.random.fork_rng(devices=[]):
            inputs = figure_inputs(cell, model, images, dataset)
        return write_figure_inputs(path, inputs)
    except Exception as error:  # the figures are extras: the cells go on without them
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"warning: no figure inputs for {cell.train.model}/{cell.explainer}: {message}", file=sys.stderr)
        return None
