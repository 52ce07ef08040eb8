"""The stored inputs of the figures that need a model: what the saliency grid and FA-CNN's morphing
figure draw, saved beside the cells when they are computed (:mod:`interpbench.engine.figure_inputs`)
so that a report is drawn from stored results alone, without a checkpoint, a dataset or an explainer.

One file per explained group (a trained model, an explainer with its arguments, the scored images):
``<store>/figure_inputs/<model>__<explainer>-<saliency key>.npz``, the saliency key being the one
that names the group's cached maps (``Cell.saliency_path``: the cell's identity less its metric).
A report copies the files its cells refer to into ``<results>/<data>/figure_inputs/``, so a
results folder alone rebuilds every figure.

Format (version 1): a zip of ``.npy`` arrays, read with ``numpy.load(allow_pickle=False)``, written
with fixed zip dates (the same inputs give the same bytes):

- ``meta``: a 0-d unicode array holding a JSON object: ``format`` (``interpbench.figure_inputs``),
  ``version``, ``saliency_key``, ``model``, ``explainer``, ``explainer_args``, ``data``, ``seed``,
  ``model_key``, ``num_images``, ``eval_seed``, ``git_commit``; the saliency grid's
  ``image_positions`` (positions among the scored images, chosen by ``pick_images`` on their
  labels; with ``data``, ``num_images`` and ``eval_seed`` they fix the test images), ``labels``,
  ``class_names`` and
  ``map_target`` (``label``: the maps explain the true class); ``morphing``: null, or the morphing
  figure's ``layers``, ``depth``, ``classes``, ``class_names``, ``images_per_class`` and
  ``correlations`` (``{class: {layer: Pearson r}}``, keys as strings);
- ``images``: uint8 ``[n, 3, H, W]``, the picked images;
- ``maps``: float16 ``[n, H, W]``, the explainer's map of each picked image for its true class,
  divided by its largest absolute value (an all-zero map stays zero), and ``map_scales``: float32
  ``[n]``, those largest absolute values (``maps * map_scales`` is the raw map to float16 precision);
- with ``morphing``: ``morph_native_<layer>`` and ``morph_gradcam_<layer>``, float32
  ``[classes, h, w]``: FA-CNN's class map and Grad-CAM at that layer, each averaged over the
  class's scored images.

numpy only: nothing here imports torch, a model, a dataset or an explainer.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from interpbench.storage import atomic_write_bytes, stable_hash

FORMAT = "interpbench.figure_inputs"
VERSION = 1
FOLDER = "figure_inputs"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class FigureInputsError(ValueError):
    """A stored figure-inputs file that cannot be read; the message is one line naming the file."""


@dataclass
class Morphing:
    """FA-CNN's class maps and Grad-CAM per layer, each averaged over a class's scored images."""
    layers: List[int]
    depth: int
    classes: List[int]
    class_names: List[str]
    native: Dict[int, np.ndarray]  # layer -> [len(classes), h, w]
    gradcam: Dict[int, np.ndarray]  # layer -> [len(classes), h, w]
    correlations: Dict[int, Dict[int, float]]  # class -> layer -> Pearson r of the two averaged maps
    images_per_class: Dict[int, int] = field(default_factory=dict)

    def meta(self) -> Dict[str, Any]:
        return {"layers": [int(v) for v in self.layers], "depth": int(self.depth),
                "classes": [int(c) for c in self.classes], "class_names": [str(n) for n in self.class_names],
                "images_per_class": {str(c): int(n) for c, n in self.images_per_class.items()},
                "correlations": {str(c): {str(layer): float(r) for layer, r in per.items()}
                                 for c, per in self.correlations.items()}}


@dataclass
class FigureInputs:
    """One explained group's figure inputs (see the module's docstring for the fields)."""
    meta: Dict[str, Any]
    images: np.ndarray  # uint8 [n, 3, H, W]
    maps: np.ndarray  # float16 [n, H, W], each map divided by its largest absolute value
    map_scales: np.ndarray  # float32 [n]
    morphing: Optional[Morphing] = None

    @property
    def class_names(self) -> List[str]:
        return [str(name) for name in self.meta["class_names"]]

    def float_images(self) -> np.ndarray:
        """The picked images as float32 in [0, 1] (the values the scored images had)."""
        return self.images.astype(np.float32) / np.float32(255.0)


def saliency_key(cell: Mapping[str, Any]) -> str:
    """The saliency key of a cell's identity (``CellResult.cell``): the identity less its metric,
    as in ``Cell.saliency_path``."""
    return stable_hash({k: v for k, v in cell.items() if k not in ("metric", "metric_args")})


def inputs_name(cell: Mapping[str, Any]) -> str:
    """The file name of the figure inputs of a cell's explained group."""
    return f"{cell['train']['model']}__{cell['explainer']}-{saliency_key(cell)}.npz"


def inputs_path(folder: Path, cell: Mapping[str, Any]) -> Path:
    """Where ``folder`` (a store or a results folder) keeps the figure inputs of ``cell``."""
    return Path(folder) / FOLDER / inputs_name(cell)


def normalised_maps(maps: np.ndarray):
    """``(maps divided by each one's largest absolute value as float16, the values as float32)``."""
    maps = np.asarray(maps, dtype=np.float64)
    scales = np.abs(maps).reshape(maps.shape[0], -1).max(axis=1) if maps.size else np.zeros(maps.shape[0])
    divided = maps / np.where(scales > 0, scales, 1.0)[:, None, None]
    return divided.astype(np.float16), scales.astype(np.float32)


def to_bytes(inputs: FigureInputs) -> bytes:
    """The ``.npz`` bytes of ``inputs`` (fixed zip dates: the same inputs give the same bytes)."""
    meta = dict(inputs.meta, format=FORMAT, version=VERSION,
                morphing=inputs.morphing.meta() if inputs.morphing is not None else None)
    arrays: Dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta, sort_keys=True, default=str)),
        "images": np.ascontiguousarray(inputs.images, dtype=np.uint8),
        "maps": np.ascontiguousarray(inputs.maps, dtype=np.float16),
        "map_scales": np.ascontiguousarray(inputs.map_scales, dtype=np.float32),
    }
    if inputs.morphing is not None:
        for layer in inputs.morphing.layers:
            arrays[f"morph_native_{int(layer)}"] = np.ascontiguousarray(inputs.morphing.native[layer], dtype=np.float32)
            arrays[f"morph_gradcam_{int(layer)}"] = np.ascontiguousarray(inputs.morphing.gradcam[layer],
                                                                         dtype=np.float32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            item = io.BytesIO()
            np.lib.format.write_array(item, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, item.getvalue())
    return buffer.getvalue()


def write_figure_inputs(path: Path, inputs: FigureInputs) -> Path:
    """Write ``inputs`` to ``path`` atomically."""
    return atomic_write_bytes(path, to_bytes(inputs))


def read_figure_inputs(path: Path) -> FigureInputs:
    """The figure inputs stored at ``path``; a file that is not one (or of another version) raises
    :class:`FigureInputsError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FigureInputsError(f"{path}: not a figure-inputs file ({reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FigureInputsError(f"{path}: not a figure-inputs file (format {meta.get('format')!r})"
                                if isinstance(meta, dict) else f"{path}: not a figure-inputs file")
    if meta.get("version") != VERSION:
        raise FigureInputsError(f"{path}: figure-inputs version {meta.get('version')!r}; this checkout reads {VERSION}")
    missing = [name for name in ("images", "maps", "map_scales") if name not in arrays]
    if missing:
        raise FigureInputsError(f"{path}: missing arrays {', '.join(missing)}")
    morphing = None
    if meta.get("morphing"):
        info = meta["morphing"]
        layers = [int(v) for v in info["layers"]]
        absent = [f"morph_{kind}_{layer}" for layer in layers for kind in ("native", "gradcam")
                  if f"morph_{kind}_{layer}" not in arrays]
        if absent:
            raise FigureInputsError(f"{path}: missing arrays {', '.join(absent)}")
        morphing = Morphing(
            layers=layers, depth=int(info["depth"]), classes=[int(c) for c in info["classes"]],
            class_names=[str(n) for n in info["class_names"]],
            native={layer: arrays[f"morph_native_{layer}"] for layer in layers},
            gradcam={layer: arrays[f"morph_gradcam_{layer}"] for layer in layers},
            correlations={int(c): {int(layer): float(r) for layer, r in per.items()}
                          for c, per in info["correlations"].items()},
            images_per_class={int(c): int(n) for c, n in (info.get("images_per_class") or {}).items()})
    return FigureInputs(meta=meta, images=arrays["images"], maps=arrays["maps"], map_scales=arrays["map_scales"],
                        morphing=morphing)
