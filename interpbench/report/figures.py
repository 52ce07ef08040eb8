"""Figures beside the leaderboard, each written as PNG and SVG (matplotlib), sized for the report's
page: at most :data:`PAGE_WIDTH_IN` inches wide (about 1340 px at the :func:`render` dpi of 110),
no text smaller than 8 pt.

Colours: one hue per model family, a lighter or darker shade of it per model of the family
(:func:`model_colours`). The family is the one the model was registered with
(``@MODELS.register(name, family=...)``); a model not registered here (a plugin that is not
loaded) counts as the family of its name's leading token (``my_net`` -> ``my``). Every figure of
a report gives a model the same colour.

- ``<metric>_curves``: a curve metric's mean curves as in the FA-CNN paper's Figure 4 (accuracy
  against the percentage of pixels removed for ``pixel_removal``; x as stored where it is not a
  fraction, e.g. the layers ``model_randomisation`` randomised), at most 8 lines per panel. Few
  models: one panel holds every explainer (a line style each) and each model's random-baseline
  curve, dashed in the model's colour. More: the models are split into groups of at most 7 (8
  without a random baseline), whole families together where they fit, each group with its legend
  beside its panels; each (group, explainer) gets a panel with a line per model and, in grey, the
  mean (dashed) and range (band) of the group's random-baseline curves, and a panel per group
  shows each model's own random curve, dashed. Where an explainer has layers (``native``'s
  ``layer``), one layer is chosen (default: the model's own). Several seeds: the curves are
  averaged.
- ``insertion_deletion``: the ``insertion`` and ``deletion`` curves side by side, drawn the same way
  (only where the results hold either metric).
- ``accuracy_vs_faithfulness``: each model's test accuracy against each metric's mean (the
  leaderboard's 95 % interval as an error bar), a panel per metric; colour: model, marker:
  explainer, and every point numbered, the numbers placed apart from each other and keyed below the
  panels. Axes read in the metric's own units (no offset or multiplier); a metric spanning many
  decades gets a log (or symmetric log) axis, and accuracy a logit axis where that spreads the
  points out (many near 1).
- ``rank_heatmap`` (boards with more than one metric): a row per (model, explainer), a column per
  metric, each cell coloured by and annotated with the row's significance rank in that metric (its
  rank by mean where the metric has no significance ranks), rows ordered by the mean of the ranks
  shown.
- ``saliency_grid`` (FA-CNN paper, Figures 1 and 5): for a few scored test images of different
  classes, the image, then every model's and explainer's map for the true class, in blocks of at
  most 10 maps per row. Each map is divided by its largest absolute value so all maps of an image
  share one colour scale ([0, 1], or [-1, 1] when a map of the image has negative values); a map
  that is all zero says so.
- ``fa_cnn_morphing``: FA-CNN's class maps (the mean of the class's channels, ``class_maps``)
  averaged over the scored test images of a class, at every layer (every k-th when there are more
  than 12), beside Grad-CAM (on that layer's output, no ReLU; equal to captum's ``LayerGradCam``)
  of the same class at the same layer, with the Pearson correlation of the two averaged maps printed
  under each pair. At the last layer, which feeds the pooling head, Grad-CAM is the class map
  divided by h * w (the paper's Theorem 1), so the correlation reads 1.00 there. Drawn where the
  results hold a model of the ``fa_cnn`` family.

The last two are drawn from the figure inputs stored beside the cells when they were computed
(:mod:`interpbench.report.inputs`, written by :mod:`interpbench.engine.figure_inputs`), copied into
the results folder's ``figure_inputs/``: a report loads no model, dataset or explainer. Without
those inputs they are skipped and the reason is returned (and printed by the leaderboard writer).
A figure that does not apply to the results (``insertion_deletion`` without insertion or deletion
cells, ``rank_heatmap`` for one metric) is left out silently.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import math
import re
import sys
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
from interpbench.report.tables import directions, pivot, tidy_table, uses_significance
from interpbench.storage import atomic_write_bytes, read_json, stable_hash, work_dir

INSERTION_DELETION = ("insertion", "deletion")
Y_LABELS = {"pixel_removal": "top-1 accuracy", "insertion": "probability of the explained class",
            "deletion": "probability of the explained class",
            "model_randomisation": "similarity to the original map"}
X_LABELS = {"pixel_removal": "pixels removed (%)", "deletion": "pixels deleted (%)",
            "insertion": "pixels inserted (%)", "model_randomisation": "layers randomised"}
MISSING_INPUTS = ("cells computed before figure inputs were stored); rerun the sweep with an empty store, or run "
                  "`python -m interpbench.engine.figure_backfill <store>` and the report again")
DPI = 110  # of the PNGs (render)
PAGE_WIDTH_IN = 12.2  # the report page's width for figures: 1342 px at DPI
FONT = 8  # the smallest text, in points
TITLE_FONT = 9
MAX_LINES = 8  # per curve panel
EXPLAINER_STYLES = ("-", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))  # dashed is kept for the random baseline
RANDOM_STYLE = "--"
BASELINE_GREY = "0.4"
# HSV hues of the families present, in order of their names: well apart for up to 8 families
FAMILY_HUES = (0.59, 0.08, 0.36, 0.99, 0.76, 0.49, 0.88, 0.17)
MARKERS = "osD^vP<X>*hp"
GRID_COLUMNS = 10  # maps per row of a saliency-grid block


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


def render(figure, dpi: int = DPI) -> Dict[str, bytes]:
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


def wrapped(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters: at spaces, then after the
    underscores of a word longer than a line (``kmeans_resnet18_b234`` -> ``kmeans_`` /
    ``resnet18_b234``), then anywhere; existing line breaks kept."""
    width = max(4, int(width))
    lines: List[str] = []
    for part in str(text).split("\n"):
        pieces: List[str] = []
        for word in re.split(r"(?<= )", part):
            if len(word.rstrip()) <= width:
                pieces.append(word)
                continue
            for piece in re.split(r"(?<=[_,=])|(?=\()", word):
                while len(piece.rstrip()) > width:
                    pieces.append(piece[:width])
                    piece = piece[width:]
                if piece:
                    pieces.append(piece)
        line = ""
        for piece in pieces:
            if line and len(line) + len(piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip())
    return "\n".join(lines)


def chars(width_in: float, fontsize: float = FONT) -> int:
    """About how many characters of ``fontsize`` fit in ``width_in`` inches (DejaVu Sans)."""
    return max(4, int(width_in * 72 / (0.62 * fontsize)))


# --- colours by model family -------------------------------------------------------------------
def model_family(model: str) -> str:
    """The family ``model`` was registered with (``@MODELS.register(name, family=...)``); for a model
    not registered here (e.g. a plugin that is not loaded), its name's leading token
    (``my_net_v2`` -> ``my``)."""
    zoo = sys.modules.get("interpbench.zoo")  # loaded with interpbench.core's registries; never imported here
    models = getattr(zoo, "MODELS", None)
    if models is not None and model in models:
        family = models.info(model).get("family")
        if family:
            return str(family)
    return re.split(r"[^0-9A-Za-z]+", str(model), maxsplit=1)[0] or str(model)


def family_hue(index: int) -> float:
    """The hue of the ``index``-th family: :data:`FAMILY_HUES`, then golden-ratio steps."""
    if index < len(FAMILY_HUES):
        return FAMILY_HUES[index]
    return (FAMILY_HUES[-1] + 0.618034 * (index - len(FAMILY_HUES) + 1)) % 1.0


def shades(hue: float, count: int) -> List[Tuple[float, float, float]]:
    """``count`` RGB colours of one hue, dark to light (HLS lightness 0.26 to 0.64)."""
    lightness = [0.42] if count == 1 else list(np.linspace(0.26, 0.64, count))
    return [colorsys.hls_to_rgb(hue, float(level), 0.75) for level in lightness]


def by_family(models: Sequence[str]) -> Dict[str, List[str]]:
    """Family -> its models (sorted), families sorted by name."""
    families: Dict[str, List[str]] = {}
    for model in sorted(set(models)):
        families.setdefault(model_family(model), []).append(model)
    return {family: families[family] for family in sorted(families)}


def model_order(models: Sequence[str]) -> List[str]:
    """The models family by family (families by name, models by name within one)."""
    return [model for members in by_family(models).values() for model in members]


def model_colours(models: Sequence[str]) -> Dict[str, Tuple[float, float, float]]:
    """An RGB colour per model: one hue per family (the families' hues as far apart as
    :data:`FAMILY_HUES` allows), models of a family told apart by lightness."""
    colours: Dict[str, Tuple[float, float, float]] = {}
    for index, members in enumerate(by_family(models).values()):
        colours.update(zip(members, shades(family_hue(index), len(members))))
    return colours


def family_groups(models: Sequence[str], capacity: int) -> List[List[str]]:
    """The models (family order) packed into groups of at most ``capacity``, a family kept in one
    group where it fits."""
    groups: List[List[str]] = []
    current: List[str] = []
    for members in by_family(models).values():
        for start in range(0, len(members), capacity):
            chunk = members[start:start + capacity]
            if current and len(current) + len(chunk) > capacity:
                groups.append(current)
                current = []
            current = current + chunk
    if current:
        groups.append(current)
    return groups


# --- curves ----------------------------------------------------------------------------------------
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


@dataclass
class CurvePanel:
    """One panel of a curves figure: a metric label, its explainers (line style each), its models
    and how the random baseline is shown: ``lines`` (each model's, dashed in its colour), ``band``
    (grey mean and range over the models) or ``none``; ``group``: the index of the panel's group
    of models, ``families``: their families."""
    label: str
    explainers: List[str]
    models: List[str]
    random: str
    group: int
    families: List[str]


def curve_panels(labels: Sequence[str], explainers: Sequence[str], models: Sequence[str],
                 has_random: bool) -> List[CurvePanel]:
    """The panels of a curves figure (see the module's docstring), each with at most
    :data:`MAX_LINES` lines."""
    def families(members: Sequence[str]) -> List[str]:
        return list(dict.fromkeys(model_family(m) for m in members))

    shown = list(explainers)
    if len(shown) <= len(EXPLAINER_STYLES) and len(models) * (len(shown) + has_random) <= MAX_LINES:
        return [CurvePanel(label, shown or ["random"], list(models), "lines" if has_random else "none", 0,
                           families(models)) for label in labels]
    panels = []
    groups = family_groups(models, MAX_LINES - 1 if has_random and shown else MAX_LINES)
    for index, group in enumerate(groups):
        for explainer in shown:
            panels += [CurvePanel(label, [explainer], group, "band" if has_random else "none", index,
                                  families(group)) for label in labels]
        if has_random:
            panels += [CurvePanel(label, ["random"], group, "lines", index, families(group)) for label in labels]
    return panels


def curves_figure(results: Sequence[CellResult], labels: Sequence[str], layer: Optional[int] = None,
                  title: str = "", colours: Optional[Dict[str, Any]] = None):
    """Mean curves of the metric ``labels`` in panels of at most :data:`MAX_LINES` lines (see the
    module's docstring), a legend per group of models beside its panels. ``colours``: model ->
    colour (default: :func:`model_colours` of every model in ``results``). Returns the figure."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    chosen = [r for r in chosen_layer(results, layer) if r.label in labels and r.curve]
    if not chosen:
        raise ValueError(f"no curves for {', '.join(labels)}; labels with curves: "
                         f"{', '.join(sorted({r.label for r in results if r.curve})) or 'none'}")
    labels = [label for label in labels if any(r.label == label for r in chosen)]
    colours = colours or model_colours([r.model for r in results])
    cells: Dict[Tuple[str, str, str], List[CellResult]] = {}
    for result in chosen:
        cells.setdefault((result.label, result.explainer_label, result.model), []).append(result)
    curves = {key: mean_curve(group) for key, group in cells.items()}
    explainers = sorted({e for _, e, _ in cells if e != "random"})
    has_random = any(e == "random" for _, e, _ in cells)
    models = model_order({m for _, _, m in cells})
    panels = curve_panels(labels, explainers, models, has_random)
    higher = {label: next(r.higher_is_better for r in chosen if r.label == label) for label in labels}
    metric = {label: next(r.metric for r in chosen if r.label == label) for label in labels}
    # x as a percentage where the curves' x are fractions (of pixels), else as stored (e.g. layers)
    factor = {label: 100.0 if max(float(np.nanmax(x)) for (lab, _, _), (x, _) in curves.items() if lab == label)
              <= 1.0 + 1e-9 else 1.0 for label in labels}

    per_row = 3
    rows: List[List[CurvePanel]] = []
    for group in sorted({p.group for p in panels}):
        members = [p for p in panels if p.group == group]
        if len(members) == len(labels):  # a panel per label: side by side
            rows += [members[i:i + per_row] for i in range(0, len(members), per_row)]
            continue
        for label in labels:  # else a label's panels start a row of their own
            own = [p for p in members if p.label == label]
            rows += [own[i:i + per_row] for i in range(0, len(own), per_row)]
    columns = max(len(row) for row in rows)
    legend_in = 2.5
    width = min(PAGE_WIDTH_IN, 3.5 * columns + legend_in)
    panel_in = (width - legend_in) / columns
    figure = plt.figure(figsize=(width, 2.9 * len(rows) + 0.6), layout="constrained")
    grid = figure.add_gridspec(len(rows), columns + 1, width_ratios=[1.0] * columns + [legend_in / panel_in])
    limits = {}
    for label in labels:
        values = np.concatenate([y for (lab, _, _), (_, y) in curves.items() if lab == label])
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        pad = 0.04 * (high - low or 1.0)
        limits[label] = (0.0, 1.02) if metric[label] == "pixel_removal" else (low - pad, high + pad)
    groups = len({p.group for p in panels})
    text_chars = chars(legend_in - 0.7)  # a legend entry's text beside its handle
    first_row = {}
    for r, row in enumerate(rows):
        first_row.setdefault(row[0].group, r)
        for c, panel in enumerate(row):
            axes = figure.add_subplot(grid[r, c])
            draw_curve_panel(axes, panel, curves, colours, factor[panel.label])
            direction = "higher is better" if higher[panel.label] else "lower is better"
            shown = ", ".join(panel.explainers)
            heading = f"{panel.label}: {shown} ({direction})"
            if groups > 1:
                heading += "\n" + ", ".join(panel.families)
            axes.set_title(wrapped(heading, chars(panel_in, TITLE_FONT)), fontsize=TITLE_FONT)
            axes.set_xlabel(X_LABELS.get(metric[panel.label], "pixels (%)" if factor[panel.label] > 1 else "step"),
                            fontsize=FONT)
            axes.set_ylabel(wrapped(Y_LABELS.get(metric[panel.label], "mean curve"), chars(2.4)), fontsize=FONT)
            if factor[panel.label] > 1:
                axes.set_xlim(-2, 102)
            axes.set_ylim(*limits[panel.label])
            axes.grid(alpha=0.3)
            axes.tick_params(labelsize=FONT)
    for group, start in first_row.items():
        members = [p for p in panels if p.group == group]
        stop = max(r for r, row in enumerate(rows) if row[0].group == group) + 1
        holder = figure.add_subplot(grid[start:stop, columns])
        holder.axis("off")
        group_models = members[0].models
        handles: List[Any] = [Line2D([], [], color=colours[m], linewidth=2.0) for m in group_models]
        names = list(group_models)
        styled = [e for e in dict.fromkeys(e for p in members for e in p.explainers) if e != "random"]
        if any(len(p.explainers) > 1 for p in members):
            for explainer, style in zip(styled, EXPLAINER_STYLES):
                handles.append(Line2D([], [], color="0.15", linestyle=style, linewidth=1.6))
                names.append(f"{explainer}")
        if any(p.random == "band" for p in members):
            handles.append((Patch(color=BASELINE_GREY, alpha=0.2, linewidth=0),
                            Line2D([], [], color=BASELINE_GREY, linestyle=RANDOM_STYLE, linewidth=1.4)))
            names.append(wrapped("random baseline: mean (dashed) and range (band) over these models", text_chars))
        if any(p.random == "lines" for p in members):
            handles.append(Line2D([], [], color="0.15", linestyle=RANDOM_STYLE, linewidth=1.2))
            names.append(wrapped("random baseline of each model (dashed, its colour)", text_chars))
        legend_title = wrapped("models: " + ", ".join(members[0].families), chars(legend_in - 0.2)) \
            if groups > 1 else "models"
        holder.legend(handles, names, loc="upper left", fontsize=FONT, title=legend_title, title_fontsize=FONT,
                      frameon=False, borderaxespad=0.0, handlelength=2.6, alignment="left")
    data = chosen[0].data
    figure.suptitle(title or f"{', '.join(labels)} on {data}", fontsize=TITLE_FONT + 2)
    return figure


def draw_curve_panel(axes, panel: CurvePanel, curves: Dict[Tuple[str, str, str], Tuple[np.ndarray, np.ndarray]],
                     colours: Dict[str, Any], factor: float = 100.0) -> None:
    """One curve panel's lines: a line per (model, explainer), and the random baseline as the panel
    says; x multiplied by ``factor`` (100: fractions drawn as percentages)."""
    styles = dict(zip(panel.explainers, EXPLAINER_STYLES)) if len(panel.explainers) > 1 else {}
    for explainer in panel.explainers:
        for model in panel.models:
            key = (panel.label, explainer, model)
            if key in curves:
                x, y = curves[key]
                style = RANDOM_STYLE if explainer == "random" else styles.get(explainer, "-")
                axes.plot(factor * x, y, linestyle=style, linewidth=1.4 if explainer == "random" else 1.8,
                          color=colours[model])
    if panel.random == "lines" and panel.explainers != ["random"]:
        for model in panel.models:
            key = (panel.label, "random", model)
            if key in curves:
                x, y = curves[key]
                axes.plot(factor * x, y, linestyle=RANDOM_STYLE, linewidth=1.1, color=colours[model], alpha=0.85)
    if panel.random == "band":
        baselines = [curves[(panel.label, "random", m)] for m in panel.models if (panel.label, "random", m) in curves]
        if baselines:
            x = baselines[0][0]
            stacked = np.stack([np.interp(x, bx, by) for bx, by in baselines])
            axes.fill_between(factor * x, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=BASELINE_GREY,
                              alpha=0.2, linewidth=0)
            axes.plot(factor * x, np.nanmean(stacked, axis=0), linestyle=RANDOM_STYLE, linewidth=1.4,
                      color=BASELINE_GREY)


# --- accuracy against faithfulness -----------------------------------------------------------
def plain_number(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits, no trailing zeros (``0.960`` -> ``0.96``)."""
    text = f"{value:.{digits}g}"
    if text in ("-0", "-0.0"):
        text = "0"
    return text.replace("-", "\N{MINUS SIGN}")


def plain_formatter():
    """A tick formatter in the axis's own units: as few significant digits as write every tick
    exactly (at least the integer digits, below a million), no offset and no multiplier."""
    from matplotlib.ticker import Formatter

    class PlainFormatter(Formatter):
        digits = 3

        def set_locs(self, locs):
            finite = sorted({float(v) for v in locs if np.isfinite(v)})
            largest = max((abs(v) for v in finite), default=0.0)
            digits = len(str(int(largest))) if 1 <= largest < 1e6 else 1
            spacing = min(np.diff(finite)) if len(finite) > 1 else abs(finite[0]) if finite else 1.0
            tolerance = 1e-6 * (spacing or 1.0)
            while digits < 15 and any(abs(float(f"{v:.{digits}g}") - v) > tolerance for v in finite):
                digits += 1
            self.digits = digits

        def __call__(self, x, pos=None):
            return plain_number(x, self.digits)

        def get_offset(self):
            return ""

    return PlainFormatter()


def value_scale(values: Sequence[float]) -> Tuple[str, Dict[str, float], str]:
    """``(scale, its arguments, a note)`` for an axis of ``values``: ``log`` when they are positive and
    the largest is at least 1000 times their (non-zero) median, ``symlog`` when so with zero or
    negative values (linear below the 10th percentile of the non-zero magnitudes), else ``linear``;
    the note says when every value is the same."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "linear", {}, ""
    if np.ptp(v) == 0:
        return "linear", {}, f"all {plain_number(float(v[0]), 4)}"
    magnitudes = np.abs(v[v != 0])
    if magnitudes.size and magnitudes.max() >= 1e3 * np.median(magnitudes):
        if v.min() > 0:
            return "log", {}, ""
        return "symlog", {"linthresh": float(np.percentile(magnitudes, 10))}, ""
    return "linear", {}, ""


def crowding(values: np.ndarray) -> float:
    """The share of neighbouring (sorted, distinct) values closer than 2 % of their span."""
    v = np.unique(values[np.isfinite(values)])
    if v.size < 2:
        return 0.0
    return float(np.mean(np.diff(v) < 0.02 * (v[-1] - v[0])))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


LOGIT_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def accuracy_axis(axes, accuracy: np.ndarray, ends: np.ndarray) -> bool:
    """Set the accuracy axis: a logit scale where all accuracies lie in (0, 1) and it crowds the
    points less than a linear one (many near 1), else linear; returns whether it is logit."""
    both = np.concatenate([accuracy, ends])
    both = both[np.isfinite(both)]
    use_logit = (both.size > 1 and both.min() > 0.002 and both.max() < 0.998
                 and crowding(logit(accuracy)) + 0.1 < crowding(accuracy))
    if use_logit:
        from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

        low, high = logit(both.min()), logit(both.max())
        pad = 0.08 * (high - low or 1.0)
        lower, upper = 1 / (1 + np.exp(-(low - pad))), 1 / (1 + np.exp(-(high + pad)))
        axes.set_yscale("logit")
        axes.set_ylim(lower, upper)
        ticks = [t for t in LOGIT_TICKS if lower <= t <= upper]
        if len(ticks) < 4:  # a narrow range: evenly spaced round accuracies
            ticks = [t for t in MaxNLocator(nbins=6).tick_values(lower, upper) if lower <= t <= upper]
        axes.yaxis.set_major_locator(FixedLocator(ticks))
        axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(plain_formatter())
    return use_logit


def spread_labels(points: np.ndarray, sizes: np.ndarray, bounds: Tuple[float, float, float, float],
                  marker: float, obstacles: Optional[np.ndarray] = None) -> np.ndarray:
    """Centres (display pixels) for labels of ``sizes`` ``[n, (w, h)]`` near ``points`` ``[n, 2]``:
    each label, most crowded point first, takes the candidate position around its point (16
    directions, growing distances) that overlaps the labels placed so far, the markers (half
    size ``marker``) and the ``obstacles`` (boxes ``[m, (x0, y0, x1, y1)]``, e.g. error bars) least,
    kept inside ``bounds`` ``(x0, y0, x1, y1)``."""
    n = len(points)
    angles = np.deg2rad(np.arange(0.0, 360.0, 22.5) + 45.0)
    steps = np.array([1.0, 1.4, 2.0, 2.8, 3.8, 5.0, 6.5, 8.5, 11.0])
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    markers = np.concatenate([points - marker, points + marker], axis=1)
    placed = np.empty((0, 4))
    centres = np.zeros((n, 2))
    near = np.linalg.norm(points[:, None] - points[None], axis=2) < 6 * marker
    for i in np.argsort(-near.sum(axis=1), kind="stable"):
        w, h = sizes[i]
        reach = np.array([w / 2 + marker + 1.0, h / 2 + marker + 1.0])
        candidates = points[i] + (steps[:, None, None] * unit[None] * reach).reshape(-1, 2)
        candidates[:, 0] = np.clip(candidates[:, 0], bounds[0] + w / 2, max(bounds[0] + w / 2, bounds[2] - w / 2))
        candidates[:, 1] = np.clip(candidates[:, 1], bounds[1] + h / 2, max(bounds[1] + h / 2, bounds[3] - h / 2))
        boxes = np.concatenate([candidates - [w / 2, h / 2], candidates + [w / 2, h / 2]], axis=1)
        cost = (1000 * overlap(boxes, placed) + 150 * overlap(boxes, markers)) / (w * h)
        if obstacles is not None:
            cost += 20 * overlap(boxes, obstacles) / (w * h)
        cost += np.linalg.norm(candidates - points[i], axis=1) / np.hypot(*reach)
        best = int(np.argmin(cost))
        centres[i] = candidates[best]
        placed = np.vstack([placed, boxes[best]])
    return centres


def overlap(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The summed overlap area of each box ``[m, (x0, y0, x1, y1)]`` with the ``others``."""
    if not len(others):
        return np.zeros(len(boxes))
    dx = np.minimum(boxes[:, None, 2], others[None, :, 2]) - np.maximum(boxes[:, None, 0], others[None, :, 0])
    dy = np.minimum(boxes[:, None, 3], others[None, :, 3]) - np.maximum(boxes[:, None, 1], others[None, :, 1])
    return (np.clip(dx, 0, None) * np.clip(dy, 0, None)).sum(axis=1)


def number_points(figure, axes, xs: np.ndarray, ys: np.ndarray, numbers: Sequence[int], marker_pt: float,
                  bars: Optional[np.ndarray] = None) -> None:
    """Write each point's number beside it (:func:`spread_labels`; ``bars``: the points' error
    bars as data boxes ``[m, (x0, y0, x1, y1)]``, kept clear where they can be), with a thin
    leader line where the number had to move away; the figure's layout must be final."""
    if not len(xs):
        return
    from matplotlib import patheffects

    renderer = figure.canvas.get_renderer()
    probe = axes.text(0.5, 0.5, "0", fontsize=FONT, transform=axes.transAxes)
    box = probe.get_window_extent(renderer)
    probe.remove()
    digit, height = box.width, box.height
    sizes = np.array([[digit * len(str(n)) + 2.0, height] for n in numbers])
    points = axes.transData.transform(np.column_stack([xs, ys]))
    frame = axes.get_window_extent(renderer)
    px = figure.dpi / 72.0
    bounds = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    obstacles = None
    if bars is not None and len(bars):
        with np.errstate(all="ignore"):
            corners = np.concatenate([axes.transData.transform(bars[:, :2]), axes.transData.transform(bars[:, 2:])],
                                     axis=1)
        corners = corners[np.isfinite(corners).all(axis=1)]
        obstacles = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]) - 1.0,
                                    np.maximum(corners[:, :2], corners[:, 2:]) + 1.0], axis=1)
    centres = spread_labels(points, sizes, bounds, marker_pt * px, obstacles)
    for (x, y), point, centre, number, (w, h) in zip(zip(xs, ys), points, centres, numbers, sizes):
        offset = (centre - point) / px
        far = np.linalg.norm(centre - point) > 1.3 * (np.hypot(w / 2, h / 2) + marker_pt * px)
        arrow = dict(arrowstyle="-", color="0.45", linewidth=0.6, shrinkA=0, shrinkB=marker_pt) if far else None
        text = axes.annotate(str(number), xy=(x, y), xytext=tuple(offset), textcoords="offset points", ha="center",
                             va="center", fontsize=FONT, color="0.1", arrowprops=arrow, annotation_clip=False)
        text.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="white")])


def board_tables(results: Sequence[CellResult]) -> Tuple[Any, Any]:
    """The results' ``(tidy_table, pivot)``, for a figure whose caller has not made them."""
    tidy = tidy_table(results)
    return tidy, pivot(tidy)


def accuracy_figure(results: Sequence[CellResult], labels: Optional[Sequence[str]] = None,
                    tables: Optional[Tuple[Any, Any]] = None, colours: Optional[Dict[str, Any]] = None):
    """Test accuracy against each metric's mean (95 % interval as error bars), a panel per metric,
    every point numbered and keyed below the panels (see the module's docstring). ``tables``: the
    results' ``(tidy_table, pivot)`` when the caller has them already; ``colours``: model -> colour."""
    plt = pyplot()
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    tidy, table = tables if tables is not None else board_tables(results)
    higher = directions(tidy)
    labels = sorted(higher) if labels is None else list(labels)
    unknown = [label for label in labels if label not in higher]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(sorted(higher))}")
    order = model_order(table["model"].unique())
    colours = colours or model_colours(order)
    records = sorted((dict(zip(table.columns, row)) for row in table.itertuples(index=False)),
                     key=lambda r: (order.index(r["model"]), r["explainer"]))
    explainers = sorted({r["explainer"] for r in records})
    markers = {e: MARKERS[i % len(MARKERS)] for i, e in enumerate(explainers)}
    number = {(r["model"], r["explainer"]): i + 1 for i, r in enumerate(records)}
    entries = [f"{number[(r['model'], r['explainer'])]}  {r['model']} · {r['explainer']}" for r in records]

    columns = 1 if len(labels) == 1 else 2
    rows = math.ceil(len(labels) / columns)
    width = PAGE_WIDTH_IN if columns == 2 else min(PAGE_WIDTH_IN, 10.0)
    entry_in = (max(len(e) for e in entries) * 0.62 * FONT + 44) / 72
    key_columns = max(1, min(len(entries), int((width - 0.3) / entry_in)))
    key_in = math.ceil(len(entries) / key_columns) * FONT * 1.6 / 72 + 0.35
    panel_in = 4.6 if columns == 1 else 4.0
    figure = plt.figure(figsize=(width, rows * panel_in + key_in + 0.6), layout="constrained")
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[panel_in] * rows + [key_in])
    accuracy = np.array([r["accuracy"] for r in records], dtype=float)
    accuracy_ends = np.array([r.get(f"accuracy_ci_{end}", np.nan) for r in records for end in ("low", "high")],
                             dtype=float)
    marker_pt = 3.5
    drawn = []
    for index, label in enumerate(labels):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        means = np.array([r[label] for r in records], dtype=float)
        scale, arguments, note = value_scale(means)
        if scale != "linear":
            axes.set_xscale(scale, **arguments)
        points, bars, bar_colours, by_marker = [], [], [], {}
        floor = np.nanmin(means[means > 0]) / 10 if scale == "log" else -np.inf  # a log axis has no zero
        for record, x, y in zip(records, means, accuracy):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            colour = colours[record["model"]]
            low, high = record.get(f"{label}_ci_low", np.nan), record.get(f"{label}_ci_high", np.nan)
            if np.isfinite(low) and np.isfinite(high):
                bars.append((max(min(low, x), floor), y, max(high, x), y))
                bar_colours.append(colour)
            low, high = record.get("accuracy_ci_low", np.nan), record.get("accuracy_ci_high", np.nan)
            if np.isfinite(low) and np.isfinite(high):
                bars.append((x, min(low, y), x, max(high, y)))
                bar_colours.append(colour)
            by_marker.setdefault(markers[record["explainer"]], []).append((x, y, colour))
            points.append((x, y, number[(record["model"], record["explainer"])]))
        if bars:
            axes.add_collection(LineCollection([[(b[0], b[1]), (b[2], b[3])] for b in bars], colors=bar_colours,
                                               linewidths=0.9, zorder=2), autolim=True)
        for marker, items in by_marker.items():
            xs, ys, point_colours = zip(*items)
            axes.scatter(xs, ys, marker=marker, c=list(point_colours), s=(2 * marker_pt) ** 2, edgecolors="white",
                         linewidths=0.5, zorder=3)
        axes.autoscale_view()
        logit_axis = accuracy_axis(axes, accuracy, accuracy_ends)
        if scale == "linear":
            axes.xaxis.set_major_formatter(plain_formatter())
            axes.margins(x=0.08)
            if note:
                value = float(means[np.isfinite(means)][0])
                axes.set_xlim(value - (abs(value) * 0.1 or 1.0), value + (abs(value) * 0.1 or 1.0))
        else:
            axes.margins(x=0.06)
        if not logit_axis:
            axes.margins(y=0.08)
        direction = "higher is better" if higher[label] else "lower is better"
        heading = f"{label} ({direction})" + (f"; {note}" if note else "")
        axes.set_title(wrapped(heading, chars(width / columns - 0.8, TITLE_FONT)), fontsize=TITLE_FONT)
        scale_note = {"log": " (log scale)", "symlog": " (symmetric log scale)"}.get(scale, "")
        axes.set_xlabel(wrapped(f"{label}: mean score" + scale_note, chars(width / columns - 1.0)),
                        fontsize=FONT)
        axes.set_ylabel("test accuracy" + (" (logit scale)" if logit_axis else ""), fontsize=FONT)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=FONT)
        drawn.append((axes, points, np.array(bars, dtype=float).reshape(-1, 4)))
    key = figure.add_subplot(grid[rows, :])
    key.axis("off")
    handles = [Line2D([], [], color=colours[r["model"]], marker=markers[r["explainer"]], linestyle="",
                      markersize=2 * marker_pt) for r in records]
    key.legend(handles, entries, loc="upper left", ncol=key_columns, fontsize=FONT, frameon=False,
               borderaxespad=0.0, handletextpad=0.4, columnspacing=1.2,
               title="Key: number, model · explainer (colour: model, one hue per family; marker: explainer)",
               title_fontsize=FONT, alignment="left")
    figure.suptitle(f"Accuracy against faithfulness on {results[0].data}", fontsize=TITLE_FONT + 2)
    figure.canvas.draw()  # the layout is final before the numbers are placed in it
    figure.set_layout_engine("none")
    for axes, points, bars in drawn:
        if points:
            xs, ys, numbers = zip(*points)
            number_points(figure, axes, np.array(xs), np.array(ys), numbers, marker_pt, bars)
    return figure


# --- ranks per metric ------------------------------------------------------------------------
def rank_matrix(table: Any, labels: Sequence[str]) -> Tuple[List[Tuple[str, str]], np.ndarray, Dict[str, str]]:
    """``(rows, ranks [rows, labels], kind per label)`` from the pivot ``table``: each metric's
    significance rank (``<metric>_sig_rank``; ``kind`` ``significance``), or its rank by mean
    (``<metric>_rank``; ``mean``) where it has no significance ranks; rows (model, explainer)
    ordered by the mean of their ranks (then family order and explainer)."""
    kinds = {label: "significance" if uses_significance(table, [label]) else "mean" for label in labels}
    columns = [f"{label}_sig_rank" if kinds[label] == "significance" else f"{label}_rank" for label in labels]
    order = model_order(table["model"].unique())
    keys = list(zip(table["model"], table["explainer"]))
    ranks = table[columns].to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        counts = np.isfinite(ranks).sum(axis=1)
        means = np.where(counts > 0, np.nansum(ranks, axis=1) / np.maximum(counts, 1), np.inf)
    ordered = sorted(range(len(keys)), key=lambda i: (means[i], order.index(keys[i][0]), keys[i][1]))
    return [keys[i] for i in ordered], ranks[ordered], kinds


def rank_text(value: float) -> str:
    """A rank as annotated: ``3``, ``2.5``, or ``–`` where there is none."""
    return "–" if not np.isfinite(value) else plain_number(float(value), 3)


def rank_figure(results: Sequence[CellResult], tables: Optional[Tuple[Any, Any]] = None):
    """Rows (model, explainer), columns metrics, each cell coloured by and annotated with its rank
    (:func:`rank_matrix`), a last column with the row's mean rank. Returns the figure."""
    plt = pyplot()
    tidy, table = tables if tables is not None else board_tables(results)
    higher = directions(tidy)
    labels = sorted(higher)
    if len(labels) < 2:
        raise ValueError(f"a rank heatmap needs more than one metric; these results have {', '.join(labels) or 'none'}")
    rows, ranks, kinds = rank_matrix(table, labels)
    names = [f"{model} · {explainer}" for model, explainer in rows]
    label_in = max(len(n) for n in names) * 0.62 * FONT / 72 + 0.3
    column_in = min(0.85, (PAGE_WIDTH_IN - label_in - 0.5) / (len(labels) + 1.3))
    headers = [wrapped(f"{label} {'↑' if higher[label] else '↓'}" + ("" if kinds[label] == "significance" else " *"),
                       24) for label in labels]
    header_in = max(len(line) for h in headers for line in h.split("\n")) * 0.62 * FONT / 72 * 0.75 + 0.5
    row_in = 0.26
    width = label_in + column_in * (len(labels) + 1.3) + 0.5
    height = row_in * len(rows) + header_in + 0.9
    figure = plt.figure(figsize=(min(PAGE_WIDTH_IN, width), height), layout="constrained")
    grid = figure.add_gridspec(1, 2, width_ratios=[len(labels), 1.0])
    axes, side = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    import matplotlib

    cmap = matplotlib.colormaps["YlGnBu_r"].with_extremes(bad="0.93")
    worst = max(2.0, float(np.nanmax(ranks)) if np.isfinite(ranks).any() else 2.0)
    with np.errstate(all="ignore"):
        counts = np.isfinite(ranks).sum(axis=1)
        means = np.where(counts > 0, np.nansum(ranks, axis=1) / np.maximum(counts, 1), np.nan)
    for target, values in ((axes, ranks), (side, means[:, None])):
        target.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=1.0, vmax=worst, aspect="auto",
                      interpolation="nearest")
        for (i, j), value in np.ndenumerate(values):
            shade = cmap((value - 1.0) / (worst - 1.0)) if np.isfinite(value) else (0.93, 0.93, 0.93, 1.0)
            light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
            text = rank_text(value) if target is axes else ("–" if not np.isfinite(value) else f"{value:.1f}")
            target.text(j, i, text, ha="center", va="center", fontsize=FONT, color="0.1" if light else "white")
        target.set_yticks(range(len(rows)))
        target.tick_params(labelsize=FONT, length=0)
        target.xaxis.tick_top()
        for spine in target.spines.values():
            spine.set_visible(False)
    axes.set_yticklabels(names)
    side.set_yticks([])
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(headers, rotation=40, ha="left", rotation_mode="anchor")
    side.set_xticks([0])
    side.set_xticklabels(["mean rank"], rotation=40, ha="left", rotation_mode="anchor")
    which = "significance rank" if any(k == "significance" for k in kinds.values()) else "rank by mean"
    starred = " (* rank by mean: no significance ranks)" if any(k == "mean" for k in kinds.values()) and \
        which == "significance rank" else ""
    figure.suptitle(wrapped(f"Each row's {which} per metric on {results[0].data}: 1 is the best{starred}; rows "
                            "by mean rank", chars(min(PAGE_WIDTH_IN, width) - 0.4, TITLE_FONT + 1)),
                    fontsize=TITLE_FONT + 1)
    return figure


# --- saliency maps ---------------------------------------------------------------------------
def normalised(maps: np.ndarray) -> np.ndarray:
    """Each map ``[N, H, W]`` divided by its largest absolute value (an all-zero map stays zero)."""
    scale = np.abs(maps).reshape(maps.shape[0], -1).max(axis=1)
    return maps / np.where(scale > 0, scale, 1.0)[:, None, None]


def grid_blocks(names: Sequence[str], most: int = GRID_COLUMNS) -> List[List[int]]:
    """The saliency grid's columns (their indices) in as few blocks of at most ``most`` as the count
    allows, as even as can be with a model's columns (names ``model\nexplainer``) kept in one block;
    evenly cut where that is not possible."""
    count = len(names)
    needed = max(1, math.ceil(count / most))
    runs: List[List[int]] = []
    for index, name in enumerate(names):
        model = name.split("\n")[0]
        if runs and names[runs[-1][0]].split("\n")[0] == model:
            runs[-1].append(index)
        else:
            runs.append([index])
    for target in range(math.ceil(count / needed), most + 1):
        blocks: List[List[int]] = [[]]
        for run in runs:
            if blocks[-1] and len(blocks[-1]) + len(run) > target:
                blocks.append([])
            blocks[-1].extend(run)
        if len(blocks) <= needed and all(len(block) <= most for block in blocks):
            return blocks
    target = math.ceil(count / needed)
    return [list(range(start, min(start + target, count))) for start in range(0, count, target)]


def saliency_grid(images: np.ndarray, labels: Sequence[str], columns: Sequence[Tuple[str, np.ndarray]],
                  title: str = ""):
    """Rows: images ``[N, 3, H, W]`` in [0, 1]; columns: the image, then each ``(title, maps [N, H, W])``,
    in blocks of at most :data:`GRID_COLUMNS` maps (:func:`grid_blocks`), so the figure fits the page.

    Maps are divided by their largest absolute value; one colour scale per image ([0, 1], or
    [-1, 1] where a map of the image has negative values), with its colour bar at the end of each of
    the image's rows; a map that is all zero reads ``all zero``.
    """
    plt = pyplot()
    if not columns:
        raise ValueError("saliency grid needs at least one (title, maps) column")
    n = images.shape[0]
    raw = [(name, np.asarray(maps, dtype=float)) for name, maps in columns]
    for name, maps in raw:
        if maps.shape[0] != n:
            raise ValueError(f"column '{name}' has {maps.shape[0]} maps for {n} images")
    scaled = [(name, normalised(maps)) for name, maps in raw]
    blocks = grid_blocks([name for name, _ in scaled])
    per_block = max(len(block) for block in blocks)
    label_in, bar_in = 0.6, 0.55
    cell = min(1.45, (PAGE_WIDTH_IN - label_in - bar_in) / (per_block + 1))
    titles = [wrapped(name, chars(cell)) for name, _ in scaled]
    title_in = max(t.count("\n") + 1 for t in titles) * FONT * 1.3 / 72 + 0.12
    suptitle = wrapped(title or "Saliency maps for the true class", chars(label_in + (per_block + 1) * cell, 10))
    figure = plt.figure(figsize=(label_in + (per_block + 1) * cell + bar_in,
                                 len(blocks) * (n * cell + title_in) + 0.35 + 0.2 * suptitle.count("\n")),
                        layout="constrained")
    outer = figure.add_gridspec(len(blocks), 1)
    signed = [any((maps[i] < -1e-9).any() for _, maps in scaled) for i in range(n)]
    for b, block in enumerate(blocks):
        inner = outer[b].subgridspec(n, per_block + 2, width_ratios=[1.0] * (per_block + 1) + [0.08])
        for i in range(n):
            vmin, cmap = (-1.0, "RdBu_r") if signed[i] else (0.0, "inferno")
            axes = figure.add_subplot(inner[i, 0])
            axes.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1), interpolation="nearest")
            axes.set_ylabel(wrapped(labels[i], chars(label_in + 0.4)), fontsize=FONT)
            if i == 0:
                axes.set_title("image", fontsize=FONT)
            shown = None
            for j, column in enumerate(block, start=1):
                axes_map = figure.add_subplot(inner[i, j])
                shown = axes_map.imshow(scaled[column][1][i], cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
                if not np.any(raw[column][1][i]):
                    axes_map.text(0.5, 0.5, "all zero", transform=axes_map.transAxes, ha="center", va="center",
                                  fontsize=FONT, color="0.1",
                                  bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="0.6"))
                if i == 0:
                    axes_map.set_title(titles[column], fontsize=FONT)
                axes_map.set_xticks([])
                axes_map.set_yticks([])
            axes.set_xticks([])
            axes.set_yticks([])
            bar = figure.colorbar(shown, cax=figure.add_subplot(inner[i, per_block + 1]))
            bar.set_ticks([vmin, 0.0, 1.0] if vmin < 0 else [0.0, 0.5, 1.0])
            bar.ax.yaxis.set_major_formatter(plain_formatter())
            bar.ax.tick_params(labelsize=FONT)
    figure.suptitle(suptitle, fontsize=10)
    return figure


# --- FA-CNN's layer-by-layer morphing --------------------------------------------------------
def morphing_figure(morphing: Morphing):
    """FA-CNN's averaged class maps at every (k-th) layer beside Grad-CAM at the same layer, from
    the stored inputs ``morphing`` (:func:`interpbench.engine.figure_inputs.morphing_inputs`). Two
    rows per class (FA-CNN, then Grad-CAM), a column per layer, ``r = <correlation>`` under each
    pair. Returns ``(figure, {class: {layer: correlation}})``."""
    plt = pyplot()
    classes, layers = list(morphing.classes), list(morphing.layers)
    label_in = 1.1
    cell = min(1.3, (PAGE_WIDTH_IN - label_in) / len(layers))
    height = (2 * cell + 0.5) * len(classes) + 0.6
    figure, grid = plt.subplots(2 * len(classes), len(layers), squeeze=False, layout="constrained",
                                figsize=(label_in + cell * len(layers), height))
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
            grid[2 * k + 1, j].set_xlabel(text, fontsize=FONT)
            if k == 0:
                heading = f"layer {layer}" + (" (last)" if layer == morphing.depth else "")
                grid[0, j].set_title(wrapped(heading, chars(cell)), fontsize=FONT)
        grid[2 * k, 0].set_ylabel(wrapped(f"class {name}", chars(label_in)) + "\nFA-CNN", fontsize=FONT)
        grid[2 * k + 1, 0].set_ylabel(wrapped(f"class {name}", chars(label_in)) + "\nGrad-CAM", fontsize=FONT)
    figure.suptitle(wrapped("FA-CNN class maps (averaged over images) beside Grad-CAM at the same layer",
                            chars(label_in + cell * len(layers), TITLE_FONT + 1)), fontsize=TITLE_FONT + 1)
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
    """First-seed cells of the ``fa_cnn`` family's models in the morphing figure's order of
    preference (``fa_cnn`` first)."""
    cells = [r for r in first_seed(results) if r.cell and model_family(r.model) == "fa_cnn"]
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
    inputs; ``colours``: every model's colour (:func:`model_colours` of all the results' models, so
    a model has one colour in every figure)."""
    results: List[CellResult]
    folder: Path
    layer: Optional[int]
    tables: Optional[Tuple[Any, Any]]
    stored: "StoredInputs"

    @property
    def colours(self) -> Dict[str, Tuple[float, float, float]]:
        return model_colours([r.model for r in self.results])


@dataclass
class Planned:
    """One figure a figure function can draw: its name, what it is drawn from (hashed, so that an
    unchanged figure is reused) and ``make() -> (Drawn, notes)``."""
    name: str
    inputs: Any
    make: Callable[[], Tuple[Drawn, List[str]]]


FIGURES: List[Callable[[FigureContext], List[Planned]]] = []


def figure(function: Callable[[FigureContext], List[Planned]]) -> Callable[[FigureContext], List[Planned]]:
    """Register a figure function: it returns the figures that apply to the context's results (none
    when they do not apply: a figure is then left out silently); :func:`write_figures` draws them in
    registration order, and one that applies but cannot be drawn is reported as skipped."""
    FIGURES.append(function)
    return function


CURVES_CAPTION = ("Colour: model (one hue per family, a shade per model); at most 8 lines per panel. With few models "
                  "a panel holds every explainer (line style each) and each model's random-baseline curve, dashed "
                  "in the model's colour; with more, a panel per group of models and explainer, the group's "
                  "random-baseline curves shown in grey (mean dashed, range as a band), and a panel of each "
                  "model's own random curve (dashed).")


@figure
def metric_curves(context: FigureContext) -> List[Planned]:
    """Each curve metric's mean curves (insertion and deletion have a figure of their own)."""
    results, folder, layer = context.results, context.folder, context.layer
    with_curves = [r for r in results if r.curve]
    planned = []
    for label in sorted({r.label for r in with_curves if r.metric not in INSERTION_DELETION}):
        name = f"{safe_name(label)}_curves"
        metric = next(r.metric for r in with_curves if r.label == label)
        caption = f"Mean {label} curves. " + CURVES_CAPTION
        if metric == "pixel_removal":
            caption = ("Top-1 accuracy against the percentage of pixels replaced by the dataset mean "
                       "in saliency order (the FA-CNN paper's Figure 4). " + caption)
        chosen = [r for r in with_curves if r.label == label]
        planned.append(Planned(name, [layer, chosen], lambda name=name, label=label, caption=caption: (
            Drawn(name, f"{label} curves", caption, write_figure(folder, name, curves_figure(
                results, [label], layer, colours=context.colours))), [])))
    return planned


@figure
def insertion_deletion(context: FigureContext) -> List[Planned]:
    """Insertion and deletion curves side by side, when the results hold either metric."""
    results, folder, layer = context.results, context.folder, context.layer
    labels = list(dict.fromkeys(r.label for m in INSERTION_DELETION for r in results if r.metric == m))
    if not labels:
        return []
    chosen = [r for r in results if r.label in labels and r.curve]
    return [Planned("insertion_deletion", [layer, chosen], lambda: (Drawn(
        "insertion_deletion", "Insertion and deletion curves",
        "Insertion and deletion curves, side by side. " + CURVES_CAPTION,
        write_figure(folder, "insertion_deletion",
                     curves_figure(results, labels, layer, title="Insertion and deletion",
                                   colours=context.colours))), []))]


@figure
def accuracy_vs_faithfulness(context: FigureContext) -> List[Planned]:
    """Each model's accuracy against each metric's mean."""
    results, folder = context.results, context.folder
    if not results:
        return []
    return [Planned("accuracy_vs_faithfulness", results, lambda: (Drawn(
        "accuracy_vs_faithfulness", "Accuracy against faithfulness",
        "Each model's test accuracy against each metric's mean (error bars: the leaderboard's 95 % "
        "interval); colour: model (one hue per family), marker: explainer; the numbers are keyed below the "
        "panels. A metric spanning many decades is on a log axis, and accuracy on a logit axis where most "
        "models are near 1.",
        write_figure(folder, "accuracy_vs_faithfulness", accuracy_figure(
            results, tables=context.tables, colours=context.colours))), []))]


@figure
def rank_heatmap(context: FigureContext) -> List[Planned]:
    """Each (model, explainer)'s rank per metric, for results with more than one metric."""
    results, folder = context.results, context.folder
    if len({r.label for r in results}) < 2:
        return []
    return [Planned("rank_heatmap", results, lambda: (Drawn(
        "rank_heatmap", "Ranks per metric",
        "A row per (model, explainer), a column per metric: the row's significance rank in the metric (1: "
        "the best or tied with it; the rank by mean where a metric has no significance ranks, marked *), "
        "rows ordered by the mean of the ranks shown, which the last column gives.",
        write_figure(folder, "rank_heatmap", rank_figure(results, tables=context.tables))), []))]


@figure
def saliency_grid_figure(context: FigureContext) -> List[Planned]:
    """The saliency grid, from the stored figure inputs (random maps left out), when the results
    have a cell with a map to show."""
    results, folder, stored = context.results, context.folder, context.stored

    def make():
        grid, notes = saliency_grid_from_inputs(results, stored)
        return Drawn("saliency_grid", "Saliency maps",
                     "A few scored test images of different classes, then each model's and explainer's map for "
                     "the true class (the FA-CNN paper's Figures 1 and 5); every map scaled by its largest "
                     "absolute value, one colour scale per image.",
                     write_figure(folder, "saliency_grid", grid)), notes

    shown = [r for r in first_seed(results) if r.explainer not in ("random",)]
    if not any(r.cell for r in shown):
        return []
    return [Planned("saliency_grid", [shown, stored.key(shown)], make)]


@figure
def fa_cnn_morphing(context: FigureContext) -> List[Planned]:
    """FA-CNN's layer-by-layer morphing, from the stored figure inputs, when the results hold a
    model of the ``fa_cnn`` family (and, where all their inputs are stored, one with the pooling
    head)."""
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
    if not candidates:
        return []
    found = [stored.get(r) for r in candidates]
    if all(inputs is not None and inputs.morphing is None for inputs in found):
        return []  # every FA-CNN's inputs are stored, and none has the pooling head
    return [Planned("fa_cnn_morphing", [candidates, stored.key(candidates)], make)]


def write_figures(results: Sequence[CellResult], folder: Path, store: Optional[Path] = None,
                  layer: Optional[int] = None, reuse: bool = True,
                  tables: Optional[Tuple[Any, Any]] = None) -> Tuple[List[Drawn], List[str]]:
    """Every figure that applies to the results (the registered figure functions, :data:`FIGURES`),
    PNG and SVG in ``folder``; returns ``(drawn, skipped)``, ``skipped`` being one line per figure
    that applies but could not be drawn (e.g. its stored inputs are missing) and why; a figure
    that does not apply (``insertion_deletion`` without insertion or deletion cells) is in neither.
    ``reuse``: keep a figure whose inputs and drawing code are unchanged (``figures.json``).
    ``tables``: the results' ``(tidy_table, pivot)`` for the accuracy figure and the rank heatmap,
    when the caller has them already."""
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
