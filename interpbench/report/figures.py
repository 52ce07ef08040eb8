"""Figures beside the leaderboard, each written as PNG and SVG (matplotlib).

- ``<metric>_curves``: a curve metric's mean curves as in the FA-CNN paper's Figure 4 (accuracy
  against the percentage of pixels removed for ``pixel_removal``): one panel per explainer, one
  line per model, each model's random-baseline curve dashed in the same colour. Where an
  explainer has layers (``native``'s ``layer``), one layer is chosen (default: the model's own).
  Several seeds: the curves are averaged.
- ``insertion_deletion``: the ``insertion`` and ``deletion`` curves side by side, one panel each
  (one row per explainer), drawn the same way.
- ``accuracy_vs_faithfulness``: each model's test accuracy against each metric's mean, with the
  leaderboard's 95 % interval as an error bar, a panel per metric.
- ``saliency_grid`` (FA-CNN paper, Figures 1 and 5): for a few scored test images of different
  classes, the image, then every model's and explainer's map for the true class. Each map is
  divided by its largest absolute value so all maps of a row share one colour scale ([0, 1], or
  [-1, 1] when a map of the row has negative values).
- ``fa_cnn_morphing``: FA-CNN's class maps (the mean of the class's channels, ``class_maps``)
  averaged over the scored test images of a class, at every layer (every k-th when there are more
  than 12), beside Grad-CAM (on that layer's output, no ReLU; equal to captum's ``LayerGradCam``)
  of the same class at the same layer, with the Pearson correlation of the two averaged maps printed
  under each pair. At the last layer, which feeds the pooling head, Grad-CAM is the class map
  divided by h * w (the paper's Theorem 1), so the correlation reads 1.00 there.

The last two are drawn from the figure inputs stored beside the cells when they were computed
(:mod:`interpbench.report.inputs`, written by :mod:`interpbench.engine.figure_inputs`), copied into
the results folder's ``figure_inputs/``: a report loads no model, dataset or explainer. Without
those inputs they are skipped and the reason is returned (and printed by the leaderboard writer).
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from interpbench.core import CellResult
from interpbench.report.inputs import (
    FOLDER,
    FigureInputs,
    FigureInputsError,
    Morphing,
    inputs_name,
    read_figure_inputs,
)
from interpbench.report.tables import directions, pivot, tidy_table
from interpbench.storage import atomic_write_bytes, read_json, stable_hash, work_dir

INSERTION_DELETION = ("insertion", "deletion")
Y_LABELS = {"pixel_removal": "top-1 accuracy", "insertion": "probability of the explained class",
            "deletion": "probability of the explained class"}
X_LABELS = {"pixel_removal": "pixels removed (%)", "deletion": "pixels deleted (%)",
            "insertion": "pixels inserted (%)"}
MISSING_INPUTS = ("cells computed before figure inputs were stored); rerun the sweep with an empty store, or run "
                  "`python -m interpbench.engine.figure_backfill <store>` and the report again")


@dataclass
class Drawn:
    """A written figure: its name (file stem), a title and caption for the report, its files."""
    name: str
    title: str
    caption: str
    files: Dict[str, Path] = field(default_factory=dict)  # "png"/"svg" -> path
    extra: Dict[str, Any] = field(default_factory=dict)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render(figure, dpi: int = 110) -> Dict[str, bytes]:
    """PNG and SVG bytes of ``figure`` (SVG text kept as text, no date, fixed ids); closes it."""
    import matplotlib

    plt = pyplot()
    out = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "interpbench"}):
        for kind in ("png", "svg"):
            buffer = io.BytesIO()
            metadata = {"Date": None} if kind == "svg" else None
            figure.savefig(buffer, format=kind, dpi=dpi, metadata=metadata)
            out[kind] = buffer.getvalue()
    plt.close(figure)
    return out


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def model_colours(models: Sequence[str]) -> Dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def chosen_layer(results: Sequence[CellResult], layer: Optional[int] = None) -> List[CellResult]:
    """Cells whose explainer has no ``layer`` argument, or whose ``layer`` is ``layer``."""
    kept = []
    for result in results:
        args = result.explainer_args
        if "layer" not in args or args["layer"] == layer:
            kept.append(result)
    return kept


def mean_curve(cells: Sequence[CellResult]) -> Tuple[np.ndarray, np.ndarray]:
    """The curve averaged over the cells (seeds) that share its x-axis."""
    first = cells[0]
    x = np.asarray(first.curve_x or np.linspace(0.0, 1.0, len(first.curve)), dtype=float)
    curves = [np.asarray(c.curve, dtype=float) for c in cells if len(c.curve) == len(x)]
    return x, np.nanmean(np.stack(curves), axis=0)


def curves_figure(results: Sequence[CellResult], labels: Sequence[str], layer: Optional[int] = None,
                  title: str = ""):
    """Mean curves of the metric ``labels``: panels (explainer x label), a line per model, each
    model's random baseline dashed in the model's colour. Returns the matplotlib figure."""
    plt = pyplot()
    chosen = [r for r in chosen_layer(results, layer) if r.label in labels and r.curve]
    if not chosen:
        raise ValueError(f"no curves for {', '.join(labels)}; labels with curves: "
                         f"{', '.join(sorted({r.label for r in results if r.curve})) or 'none'}")
    named = [(r.explainer_label, r) for r in chosen]
    explainers = sorted({e for e, _ in named if e != "random"}) or ["random"]
    models = sorted({r.model for r in chosen})
    colours = model_colours(models)
    if len(labels) == 1:
        columns = min(3, len(explainers))
        panels = [(labels[0], e) for e in explainers]
        rows = math.ceil(len(panels) / columns)
    else:
        columns, rows = len(labels), len(explainers)
        panels = [(label, e) for e in explainers for label in labels]
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns + 2.2, 3.2 * rows + 0.8), squeeze=False)
    for axes, (label, explainer) in zip(grid.flat, panels):
        metric = next(r.metric for _, r in named if r.label == label)
        for model in models:
            for name, style, width in ((explainer, "-", 1.6), ("random", "--", 1.0)):
                if name == "random" and explainer == "random":
                    continue
                cells = [r for e, r in named if e == name and r.model == model and r.label == label]
                if cells:
                    x, y = mean_curve(cells)
                    axes.plot(100 * x, y, linestyle=style, linewidth=width, color=colours[model],
                              alpha=1.0 if style == "-" else 0.7, marker="." if style == "-" else None,
                              markersize=3)
        direction = "higher is better" if next(r for _, r in named if r.label == label).higher_is_better \
            else "lower is better"
        axes.set_title(f"{label}: {explainer} ({direction})", fontsize=9)
        axes.set_xlabel(X_LABELS.get(metric, "fraction of pixels (%)"), fontsize=8)
        axes.set_ylabel(Y_LABELS.get(metric, "mean curve"), fontsize=8)
        if metric == "pixel_removal":
            axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[m], linewidth=1.6) for m in models]
    handles += [plt.Line2D([], [], color="grey", linestyle="-"), plt.Line2D([], [], color="grey", linestyle="--")]
    names = list(models) + ["explainer (solid)", "random baseline (dashed)"]
    figure.legend(handles, names, loc="center right", fontsize=7, frameon=False)
    data = chosen[0].data
    figure.suptitle(title or f"{', '.join(labels)} on {data}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1 - 2.0 / figure.get_figwidth(), 1 - 0.4 / figure.get_figheight()))
    return figure


def accuracy_figure(results: Sequence[CellResult], labels: Optional[Sequence[str]] = None,
                    tables: Optional[Tuple[Any, Any]] = None):
    """Test accuracy against each metric's mean (95 % interval as error bars), a panel per metric.
    ``tables``: the results' ``(tidy_table, pivot)`` when the caller has them already."""
    plt = pyplot()
    if tables is None:
        tidy = tidy_table(results)
        tables = tidy, pivot(tidy)
    tidy, table = tables
    higher = directions(tidy)
    labels = sorted(higher) if labels is None else list(labels)
    unknown = [label for label in labels if label not in higher]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(sorted(higher))}")
    models = sorted(table["model"].unique())
    explainers = sorted(table["explainer"].unique())
    colours = model_colours(models)
    markers = dict(zip(explainers, "os^Dvx<>P*"*3))
    columns = min(3, len(labels))
    rows = math.ceil(len(labels) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns + 2.2, 3.4 * rows + 0.6), squeeze=False)
    for axes, label in zip(grid.flat, labels):
        for row in table.itertuples(index=False):
            record = dict(zip(table.columns, row))
            value = record[label]
            if value != value:
                continue
            low, high = record[f"{label}_ci_low"], record[f"{label}_ci_high"]
            error = None if low != low else [[value - low], [high - value]]
            axes.errorbar(value, record["accuracy"], xerr=error, marker=markers[record["explainer"]],
                          color=colours[record["model"]], markersize=5, capsize=2, linewidth=0.8)
        axes.set_xlabel(f"{label} {'↑' if higher[label] else '↓'}", fontsize=8)
        axes.set_ylabel("test accuracy", fontsize=8)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
    for axes in grid.flat[len(labels):]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="") for m in models]
    handles += [plt.Line2D([], [], color="grey", marker=markers[e], linestyle="") for e in explainers]
    figure.legend(handles, list(models) + list(explainers), loc="center right", fontsize=7, frameon=False)
    figure.suptitle(f"Accuracy against faithfulness on {results[0].data}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1 - 2.0 / figure.get_figwidth(), 1 - 0.4 / figure.get_figheight()))
    return figure


# --- saliency maps ---------------------------------------------------------------------------
def normalised(maps: np.ndarray) -> np.ndarray:
    """Each map ``[N, H, W]`` divided by its largest absolute value (an all-zero map stays zero)."""
    scale = np.abs(maps).reshape(maps.shape[0], -1).max(axis=1)
    return maps / np.where(scale > 0, scale, 1.0)[:, None, None]


def saliency_grid(images: np.ndarray, labels: Sequence[str], columns: Sequence[Tuple[str, np.ndarray]],
                  title: str = ""):
    """Rows: images ``[N, 3, H, W]`` in [0, 1]; columns: the image, then each ``(title, maps [N, H, W])``.

    Maps are divided by their largest absolute value; one colour scale per row ([0, 1], or
    [-1, 1] where a map of the row has negative values), with its colour bar at the row's end.
    """
    plt = pyplot()
    if not columns:
        raise ValueError("saliency grid needs at least one (title, maps) column")
    n = images.shape[0]
    scaled = [(name, normalised(np.asarray(maps, dtype=float))) for name, maps in columns]
    for name, maps in scaled:
        if maps.shape[0] != n:
            raise ValueError(f"column '{name}' has {maps.shape[0]} maps for {n} images")
    width = len(scaled) + 1
    figure, grid = plt.subplots(n, width + 1, figsize=(1.3 * width + 0.6, 1.4 * n + 1.0), squeeze=False,
                                gridspec_kw={"width_ratios": [1] * width + [0.08]})
    for i in range(n):
        signed = any((maps[i] < -1e-9).any() for _, maps in scaled)
        vmin, cmap = (-1.0, "RdBu_r") if signed else (0.0, "inferno")
        axes = grid[i, 0]
        axes.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1), interpolation="nearest")
        axes.set_ylabel(labels[i], fontsize=7)
        if i == 0:
            axes.set_title("image", fontsize=6)
        shown = None
        for j, (name, maps) in enumerate(scaled, start=1):
            shown = grid[i, j].imshow(maps[i], cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
            if i == 0:
                grid[i, j].set_title(name, fontsize=6.5)
        for axes in grid[i, :width]:
            axes.set_xticks([])
            axes.set_yticks([])
        bar = figure.colorbar(shown, cax=grid[i, width])
        bar.ax.tick_params(labelsize=5)
    figure.suptitle(title or "Saliency maps for the true class", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()), w_pad=0.1, h_pad=0.3)
    return figure


# --- FA-CNN's layer-by-layer morphing --------------------------------------------------------
def morphing_figure(morphing: Morphing):
    """FA-CNN's averaged class maps at every (k-th) layer beside Grad-CAM at the same layer, from
    the stored inputs ``morphing`` (:func:`interpbench.engine.figure_inputs.morphing_inputs`). Two
    rows per class (FA-CNN, then Grad-CAM), a column per layer, ``r = <correlation>`` under each
    pair. Returns ``(figure, {class: {layer: correlation}})``."""
    plt = pyplot()
    classes, layers = list(morphing.classes), list(morphing.layers)
    figure, grid = plt.subplots(2 * len(classes), len(layers),
                                figsize=(1.3 * len(layers) + 1.0, 2.9 * len(classes) + 0.8), squeeze=False)
    correlations: Dict[int, Dict[int, float]] = {}
    for k, target in enumerate(classes):
        correlations[target] = {layer: morphing.correlations[target][layer] for layer in layers}
        name = morphing.class_names[k] if morphing.class_names else str(target)
        for j, layer in enumerate(layers):
            native, gradcam = morphing.native[layer][k], morphing.gradcam[layer][k]
            r = correlations[target][layer]
            for row, image in ((2 * k, native), (2 * k + 1, gradcam)):
                image = np.asarray(image, dtype=np.float64)
                axes = grid[row, j]
                scale = np.abs(image).max() or 1.0
                axes.imshow(image / scale, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
                axes.set_xticks([])
                axes.set_yticks([])
            text = "r = –" if r != r else f"r = {r:.2f}"
            grid[2 * k + 1, j].set_xlabel(text, fontsize=8)
            if k == 0:
                grid[0, j].set_title(f"layer {layer}" + (" (last)" if layer == morphing.depth else ""), fontsize=7)
        grid[2 * k, 0].set_ylabel(f"class {name}\nFA-CNN", fontsize=7)
        grid[2 * k + 1, 0].set_ylabel(f"class {name}\nGrad-CAM", fontsize=7)
    figure.suptitle("FA-CNN class maps (averaged over images) beside Grad-CAM at the same layer", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))
    return figure, correlations


# --- from the stored figure inputs -----------------------------------------------------------
def first_seed(results: Sequence[CellResult]) -> List[CellResult]:
    seeds = sorted({r.seed for r in results})
    return [r for r in results if r.seed == seeds[0]] if seeds else []


def listing(names: Sequence[str], shown: int = 4) -> str:
    """``a, b, c, d and 3 more``."""
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class StoredInputs:
    """The figure inputs a report's cells refer to (their first seed's explained groups), copied
    from ``<store>/figure_inputs/`` into ``<folder>/figure_inputs/`` (so the results folder alone
    rebuilds the figures) and read from there. Files of other groups in the folder's copy are
    removed. ``problems``: one line per file that could not be read."""

    def __init__(self, results: Sequence[CellResult], folder: Path, store: Optional[Path]) -> None:
        self.folder = Path(folder) / FOLDER
        self.paths: Dict[str, Path] = {}
        self.digests: Dict[str, str] = {}
        self.problems: List[str] = []
        self.loaded: Dict[str, Optional[FigureInputs]] = {}
        names = sorted({name for name in map(self.name, first_seed(results)) if name})
        source = Path(store) / FOLDER if store is not None else None
        for name in names:
            copy = self.folder / name
            original = source / name if source is not None else None
            if original is not None and original.is_file() and original.resolve() != copy.resolve():
                data = original.read_bytes()
                if not copy.is_file() or copy.read_bytes() != data:
                    atomic_write_bytes(copy, data)
            if copy.is_file():
                self.paths[name] = copy
                self.digests[name] = hashlib.sha256(copy.read_bytes()).hexdigest()[:16]
        if self.folder.is_dir():
            for stale in self.folder.glob("*.npz"):
                if stale.name not in names:
                    stale.unlink()

    @staticmethod
    def name(result: CellResult) -> Optional[str]:
        """The file name of ``result``'s figure inputs (None for a record without a cell identity)."""
        try:
            return inputs_name(result.cell) if result.cell else None
        except (KeyError, TypeError):
            return None

    def get(self, result: CellResult) -> Optional[FigureInputs]:
        """The stored inputs of ``result``'s explained group, or None (missing or unreadable)."""
        name = self.name(result)
        if name is None:
            return None
        if name not in self.loaded:
            self.loaded[name] = None
            if name in self.paths:
                try:
                    self.loaded[name] = read_figure_inputs(self.paths[name])
                except FigureInputsError as error:
                    self.problems.append(str(error))
        return self.loaded[name]

    def key(self, results: Sequence[CellResult]) -> Dict[str, Optional[str]]:
        """The digests of the files of ``results`` (for the figure cache's key)."""
        return {name: self.digests.get(name) for name in sorted({n for n in map(self.name, results) if n})}


def saliency_grid_from_inputs(results: Sequence[CellResult], stored: StoredInputs,
                              skip_explainers: Sequence[str] = ("random",)):
    """The saliency grid of the results' models and explainers (first seed) from their stored
    figure inputs. Returns ``(figure, notes)``; raises when no column has its inputs."""
    cells = [r for r in chosen_layer(first_seed(results)) if r.cell and r.explainer not in skip_explainers]
    if not cells:
        raise ValueError("no cells with a map to show (random maps are left out)")
    pairs: Dict[Tuple[str, str], CellResult] = {}
    for result in sorted(cells, key=lambda r: (r.model, r.explainer_label)):
        pairs.setdefault((result.model, result.explainer_label), result)
    columns, notes, missing = [], [], []
    reference: Optional[FigureInputs] = None
    for (model_name, label), result in pairs.items():
        inputs = stored.get(result)
        if inputs is None:
            missing.append(f"{model_name}/{label}")
            continue
        if reference is None:
            reference = inputs
        elif any(inputs.meta.get(k) != reference.meta.get(k) for k in ("data", "num_images", "eval_seed",
                                                                        "image_positions")):
            notes.append(f"{model_name}/{label}: its stored images are not the other columns' images; left out")
            continue
        columns.append((f"{model_name}\n{label}", inputs.maps.astype(np.float32)))
    if missing:
        notes.insert(0, f"no stored figure inputs for {listing(missing)} ({MISSING_INPUTS}")
    if reference is None:
        raise FileNotFoundError("; ".join(notes))
    figure = saliency_grid(reference.float_images(), reference.class_names, columns,
                           title=f"Saliency maps for the true class on {cells[0].data} "
                                 "(each map scaled by its largest absolute value)")
    return figure, notes


def fa_cnn_cells(results: Sequence[CellResult]) -> List[CellResult]:
    """First-seed cells in the morphing figure's order of preference (``fa_cnn`` first)."""
    cells = [r for r in first_seed(results) if r.cell]
    return sorted(cells, key=lambda r: (r.model != "fa_cnn", r.model, str(r.key)))


def morphing_from_inputs(results: Sequence[CellResult], stored: StoredInputs):
    """The morphing figure of the results' first FA-CNN with the pooling head (first seed) whose
    stored figure inputs hold it. Returns ``(figure, correlations, model name)``."""
    candidates = fa_cnn_cells(results)
    if not candidates:
        raise ValueError("no FA-CNN cells in these results")
    lacking = []
    for result in candidates:
        inputs = stored.get(result)
        if inputs is None:
            lacking.append(result.model)
        elif inputs.morphing is not None:
            figure, correlations = morphing_figure(inputs.morphing)
            return figure, correlations, result.model
    if lacking:
        lacking = list(dict.fromkeys(lacking))  # in the order of preference: fa_cnn first
        raise FileNotFoundError(f"no stored figure inputs for {listing(lacking)} ({MISSING_INPUTS}")
    raise ValueError("no FA-CNN with the pooling head in these results")


def write_figure(folder: Path, name: str, figure) -> Dict[str, Path]:
    return {kind: atomic_write_bytes(Path(folder) / f"{name}.{kind}", data) for kind, data in render(figure).items()}


def code_version() -> str:
    """A hash of the code that draws the figures (this file and the leaderboard's tables)."""
    here = Path(__file__).resolve().parent
    return stable_hash([(here / name).read_text() for name in ("figures.py", "tables.py", "stats.py")])


def as_json(inputs: Any) -> Any:
    """``inputs`` with every cell result replaced by its JSON record (for hashing)."""
    if isinstance(inputs, CellResult):
        return inputs.to_json()
    if isinstance(inputs, (list, tuple)):
        return [as_json(item) for item in inputs]
    return inputs


class FigureCache:
    """``figures.json`` in a results folder: per figure, the hash of its inputs and of the drawing
    code, its title, caption and files. A figure whose inputs and code are unchanged and whose
    files exist is reused, so a sweep's rerun does not redraw every figure."""

    def __init__(self, folder: Path, reuse: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "figures.json"
        self.old = read_json(self.path) if reuse and self.path.exists() else {}
        self.new: Dict[str, Any] = {}
        self.version = code_version()

    def get(self, name: str, inputs: Any, make) -> Drawn:
        """The figure ``name`` drawn by ``make() -> (Drawn, notes)``, or reused; returns (Drawn, notes)."""
        key = stable_hash([self.version, as_json(inputs)], 16)
        entry = self.old.get(name)
        if (entry and entry.get("key") == key and not entry.get("notes")
                and all((self.folder / f).exists() for f in entry.get("files", {}).values())):
            self.new[name] = entry
            files = {kind: self.folder / f for kind, f in entry["files"].items()}
            return Drawn(name, entry["title"], entry["caption"], files, entry.get("extra", {})), []
        drawn, notes = make()
        self.new[name] = {"key": key, "title": drawn.title, "caption": drawn.caption, "extra": drawn.extra,
                          "files": {kind: path.name for kind, path in drawn.files.items()}, "notes": notes}
        return drawn, notes

    def save(self) -> None:
        import json

        atomic_write_bytes(self.path, (json.dumps(self.new, indent=2, sort_keys=True) + "\n").encode())


@dataclass
class FigureContext:
    """What every figure function reads: the results (sorted), the report's folder, the CAM layer
    chosen for curves, the report's tables (``(tidy_table, pivot)`` or None) and the stored figure
    inputs."""
    results: List[CellResult]
    folder: Path
    layer: Optional[int]
    tables: Optional[Tuple[Any, Any]]
    stored: "StoredInputs"


@dataclass
class Planned:
    """One figure a figure function can draw: its name, what it is drawn from (hashed, so that an
    unchanged figure is reused) and ``make() -> (Drawn, notes)``."""
    name: str
    inputs: Any
    make: Callable[[], Tuple[Drawn, List[str]]]


FIGURES: List[Callable[[FigureContext], List[Planned]]] = []


def figure(function: Callable[[FigureContext], List[Planned]]) -> Callable[[FigureContext], List[Planned]]:
    """Register a figure function: it returns the figures it can draw from the context (none when
    the results do not allow it); :func:`write_figures` draws them in registration order."""
    FIGURES.append(function)
    return function


@figure
def metric_curves(context: FigureContext) -> List[Planned]:
    """Each curve metric's mean curves (insertion and deletion have a figure of their own)."""
    results, folder, layer = context.results, context.folder, context.layer
    with_curves = [r for r in results if r.curve]
    planned = []
    for label in sorted({r.label for r in with_curves if r.metric not in INSERTION_DELETION}):
        name = f"{safe_name(label)}_curves"
        metric = next(r.metric for r in with_curves if r.label == label)
        caption = (f"Mean {label} curves, one panel per explainer, one line per model; each model's "
                   "random-baseline curve dashed in the model's colour.")
        if metric == "pixel_removal":
            caption = ("Top-1 accuracy against the percentage of pixels replaced by the dataset mean "
                       "in saliency order (the FA-CNN paper's Figure 4). " + caption)
        chosen = [r for r in with_curves if r.label == label]
        planned.append(Planned(name, [layer, chosen], lambda name=name, label=label, caption=caption: (
            Drawn(name, f"{label} curves", caption, write_figure(folder, name, curves_figure(results, [label], layer))),
            [])))
    return planned


@figure
def insertion_deletion(context: FigureContext) -> List[Planned]:
    """Insertion and deletion curves side by side, when the results hold either."""
    results, folder, layer = context.results, context.folder, context.layer
    with_curves = [r for r in results if r.curve]
    labels = list(dict.fromkeys(r.label for m in INSERTION_DELETION for r in with_curves if r.metric == m))
    if not labels:
        return []
    chosen = [r for r in with_curves if r.label in labels]
    return [Planned("insertion_deletion", [layer, chosen], lambda: (Drawn(
        "insertion_deletion", "Insertion and deletion curves",
        "Insertion and deletion curves, one panel each (a row per explainer), one line per model; each "
        "model's random-baseline curve dashed in the model's colour.",
        write_figure(folder, "insertion_deletion",
                     curves_figure(results, labels, layer, title="Insertion and deletion"))), []))]


@figure
def accuracy_vs_faithfulness(context: FigureContext) -> List[Planned]:
    """Each model's accuracy against each metric's mean."""
    results, folder = context.results, context.folder
    if not results:
        return []
    return [Planned("accuracy_vs_faithfulness", results, lambda: (Drawn(
        "accuracy_vs_faithfulness", "Accuracy against faithfulness",
        "Each model's test accuracy against each metric's mean (error bars: the leaderboard's 95 % "
        "interval); colour: model, marker: explainer.",
        write_figure(folder, "accuracy_vs_faithfulness", accuracy_figure(results, tables=context.tables))), []))]


@figure
def saliency_grid_figure(context: FigureContext) -> List[Planned]:
    """The saliency grid, from the stored figure inputs (random maps left out)."""
    results, folder, stored = context.results, context.folder, context.stored

    def make():
        grid, notes = saliency_grid_from_inputs(results, stored)
        return Drawn("saliency_grid", "Saliency maps",
                     "A few scored test images of different classes, then each model's and explainer's map for "
                     "the true class (the FA-CNN paper's Figures 1 and 5); every map scaled by its largest "
                     "absolute value, one colour scale per row.",
                     write_figure(folder, "saliency_grid", grid)), notes

    shown = [r for r in first_seed(results) if r.explainer != "random"]
    return [Planned("saliency_grid", [shown, stored.key(shown)], make)]


@figure
def fa_cnn_morphing(context: FigureContext) -> List[Planned]:
    """FA-CNN's layer-by-layer morphing, from the stored figure inputs."""
    results, folder, stored = context.results, context.folder, context.stored

    def make():
        drawing, correlations, model_name = morphing_from_inputs(results, stored)
        last = [per[max(per)] for per in correlations.values()]
        return Drawn("fa_cnn_morphing", "FA-CNN layer-by-layer morphing",
                     f"{model_name}'s class maps averaged over the scored test images of a class, at each layer, "
                     "beside Grad-CAM at the same layer (no ReLU); r: Pearson correlation of the pair. At the last "
                     "layer, which feeds the pooling head, Grad-CAM is the class map over h * w (Theorem 1): r = "
                     + ", ".join(f"{v:.2f}" for v in last) + ".",
                     write_figure(folder, "fa_cnn_morphing", drawing),
                     extra={"correlations": {str(c): {str(k): v for k, v in per.items()}
                                             for c, per in correlations.items()}}), []

    candidates = fa_cnn_cells(results)
    return [Planned("fa_cnn_morphing", [candidates, stored.key(candidates)], make)]


def write_figures(results: Sequence[CellResult], folder: Path, store: Optional[Path] = None,
                  layer: Optional[int] = None, reuse: bool = True,
                  tables: Optional[Tuple[Any, Any]] = None) -> Tuple[List[Drawn], List[str]]:
    """Every figure the results allow (the registered figure functions, :data:`FIGURES`), PNG and SVG
    in ``folder``; returns ``(drawn, skipped)``, ``skipped`` being one line per figure left out and
    why. ``reuse``: keep a figure whose inputs and drawing code are unchanged (``figures.json``).
    ``tables``: the results' ``(tidy_table, pivot)`` for the accuracy figure, when the caller has
    them already."""
    results = sorted(results, key=lambda r: (r.model, r.explainer, r.label, str(r.seed), r.key))
    store = work_dir(None) if store is None else Path(store)
    cache = FigureCache(folder, reuse)
    context = FigureContext(results, Path(folder), layer, tables, StoredInputs(results, folder, store))
    drawn: List[Drawn] = []
    skipped: List[str] = []
    for function in FIGURES:
        for planned in function(context):
            try:
                made, notes = cache.get(planned.name, planned.inputs, planned.make)
            except Exception as error:  # a figure that cannot be drawn is reported, the others go on
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                skipped.append(f"{planned.name}: {message}")
                continue
            drawn.append(made)
            skipped.extend(f"{planned.name}: {note}" for note in notes)
    skipped.extend(f"figure inputs: {problem}" for problem in context.stored.problems)
    cache.save()
    return drawn, skipped
