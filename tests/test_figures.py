"""The report's figures read on the page: each one fits the page's width (at most 1400 px), has no
text under 8 pt at that width, no text over another panel's plotting area or outside the figure,
at most 8 lines per curve panel, one hue per model family, accuracy axes in their own units
(no offset), every accuracy point numbered, a note on all-zero maps, rank annotations equal to the
leaderboard's ranks, and only figures that apply to the board's metrics."""
import colorsys
import struct
from dataclasses import replace

import numpy as np
import pytest
from test_report import fake_cell, fake_results

from interpbench.report.figures import (
    DPI,
    FIGURES,
    FigureContext,
    StoredInputs,
    accuracy_figure,
    curves_figure,
    family_groups,
    grid_blocks,
    model_colours,
    model_family,
    morphing_figure,
    rank_figure,
    rank_matrix,
    render,
    saliency_grid,
    wrapped,
    write_figures,
)
from interpbench.report.inputs import Morphing
from interpbench.report.tables import pivot, tidy_table

# 13 models of 7 families: 10 registered in the zoo, 3 not (a plugin's: family by the leading token)
FAMILIES = {
    "bcos_cnn": "bcos", "bcos_resnet18": "bcos", "bcosified_resnet18": "bcos", "ca_stream_resnet18": "ca_stream",
    "coda_net": "coda", "fa_cnn": "fa_cnn", "fa_cnn_linear": "fa_cnn", "vanilla_cnn": "fa_cnn",
    "kmeans_resnet18_b4": "kmeans_head", "resnet18": "resnet", "toy_alpha": "toy", "toy_beta": "toy",
    "toy_gamma": "toy",
}
MAX_WIDTH_PX = 1400
PAGE_PX = 1350


def board(metrics=("pixel_removal",), explainers=("native", "gradcam", "random"), curves=True):
    """13 models x explainers x metrics; most accuracies between 0.96 and 0.99 (a clump), two low."""
    results = []
    for m, model in enumerate(FAMILIES):
        accuracy = {"fa_cnn": 0.6, "fa_cnn_linear": 0.43}.get(model, 0.96 + 0.0025 * m)
        for e, explainer in enumerate(explainers):
            quality = 0.9 - 0.03 * m - 0.2 * e
            for metric in metrics:
                rng = np.random.default_rng(100 * m + 10 * e + len(metric))
                values = np.clip(rng.normal(quality, 0.05, 20), 0, 1)
                curve = [1.0, quality, quality - 0.2, 0.2, 0.1] if curves and metric in (
                    "pixel_removal", "insertion", "deletion") else None
                results.append(fake_cell(model, explainer, metric, values, accuracy=accuracy, curve=curve,
                                         higher=metric != "deletion"))
    return results


def png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", data[16:20])[0]


def drawn_texts(figure, monkeypatch):
    """Every text the figure draws (not just holds) with its window extent, at the PNG's dpi."""
    from matplotlib.text import Text

    seen = []
    original = Text.draw

    def record(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.append((self, Text.get_window_extent(self, renderer)))  # an annotation's text, not its line

    figure.set_dpi(DPI)
    with monkeypatch.context() as patched:
        patched.setattr(Text, "draw", record)
        figure.canvas.draw()
    return seen


def intersection(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0) if width > 1 and height > 1 else 0.0


def check_page(figure, monkeypatch, max_lines=None):
    """The checks every figure passes; returns the drawn texts and the PNG's width."""
    texts = drawn_texts(figure, monkeypatch)
    assert texts
    page = figure.bbox
    panels = [axes for axes in figure.axes if axes.get_visible() and axes.axison]
    for text, box in texts:
        where = f"{text.get_text()!r} at {box}"
        assert box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1 and box.x1 <= page.x1 + 1 \
            and box.y1 <= page.y1 + 1, f"outside the figure: {where}"
        for axes in panels:
            if axes is not text.axes:
                assert intersection(box, axes.get_window_extent()) == 0, f"over another panel: {where}"
    if max_lines is not None:
        assert all(len(axes.get_lines()) <= max_lines for axes in panels)
    sizes = [text.get_fontsize() for text, _ in texts]
    width = png_width(render(figure)["png"])  # closes the figure
    assert width <= MAX_WIDTH_PX
    assert min(size * min(1.0, PAGE_PX / width) for size in sizes) >= 8
    return texts, width


def hue(colour) -> float:
    return colorsys.rgb_to_hsv(*colour[:3])[0]


def hue_gap(a, b) -> float:
    gap = abs(hue(a) - hue(b)) % 1.0
    return min(gap, 1.0 - gap)


def test_the_page_checks_catch_a_bad_figure(monkeypatch):
    from interpbench.report.figures import pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(6, 3))
    left.text(1.2, 0.5, "over the next panel", transform=left.transAxes, fontsize=9)
    with pytest.raises(AssertionError, match="over another panel: 'over the next panel'"):
        check_page(figure, monkeypatch)
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.tick_params(labelsize=6)
    with pytest.raises(AssertionError, match="assert 6.0 >= 8"):
        check_page(figure, monkeypatch)
    figure, axes = plt.subplots(figsize=(14, 3))  # 1540 px
    axes.tick_params(labelsize=9)
    with pytest.raises(AssertionError, match="assert 1540 <= 1400"):
        check_page(figure, monkeypatch)
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.tick_params(labelsize=9)
    axes.set_title("out of the figure", x=-0.4, fontsize=9)
    with pytest.raises(AssertionError, match="outside the figure: 'out of the figure'"):
        check_page(figure, monkeypatch)


# --- colours --------------------------------------------------------------------------------------
def test_a_family_shares_a_hue_and_families_differ():
    assert {model: model_family(model) for model in FAMILIES} == FAMILIES
    assert model_family("my_net") == "my" and model_family("plain") == "plain"
    colours = model_colours(list(FAMILIES))
    for a in FAMILIES:
        for b in FAMILIES:
            if a == b:
                continue
            if FAMILIES[a] == FAMILIES[b]:
                assert hue_gap(colours[a], colours[b]) < 0.01, (a, b)
                lightness = [colorsys.rgb_to_hls(*colours[m])[1] for m in (a, b)]
                assert abs(lightness[0] - lightness[1]) >= 0.05, (a, b)  # told apart by lightness
            else:
                assert hue_gap(colours[a], colours[b]) >= 0.05, (a, b)
    # a model keeps its colour whatever else a figure shows: colours come from the whole board
    assert model_colours(list(FAMILIES))["resnet18"] == colours["resnet18"]
    assert family_groups(list(FAMILIES), 7) == [
        ["bcos_cnn", "bcos_resnet18", "bcosified_resnet18", "ca_stream_resnet18", "coda_net"],
        ["fa_cnn", "fa_cnn_linear", "vanilla_cnn", "kmeans_resnet18_b4", "resnet18"],
        ["toy_alpha", "toy_beta", "toy_gamma"]]


def test_wrapping_breaks_at_spaces_then_underscores():
    assert wrapped("models: fa_cnn, kmeans_head, resnet", 26) == "models: fa_cnn,\nkmeans_head, resnet"
    assert wrapped("kmeans_resnet18_b234\ngradcam", 14) == "kmeans_\nresnet18_b234\ngradcam"
    assert wrapped("abcdefghijklmnopqrstuvwxyz", 10) == "abcdefghij\nklmnopqrst\nuvwxyz"


# --- curves ---------------------------------------------------------------------------------------
def test_curve_panels_hold_at_most_eight_lines_coloured_by_family(monkeypatch):
    results = board()
    colours = model_colours(list(FAMILIES))
    figure = curves_figure(results, ["pixel_removal"])
    panels = [axes for axes in figure.axes if axes.axison]
    # three groups of models (5, 5, 3) x (native, gradcam, random)
    assert len(panels) == 9
    assert [axes.get_title() for axes in panels[:3]] == [
        "pixel_removal: gradcam (higher is better)\nbcos, ca_stream, coda",
        "pixel_removal: native (higher is better)\nbcos, ca_stream, coda",
        "pixel_removal: random (higher is better)\nbcos, ca_stream, coda"]
    by_colour = {colour: model for model, colour in colours.items()}
    for axes in panels:
        solid = [line for line in axes.get_lines() if line.get_linestyle() == "-"]
        dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
        if "random" in axes.get_title():
            assert not solid and 3 <= len(dashed) <= 5  # each model's own random curve, in its colour
            assert all(tuple(line.get_color()) in by_colour for line in dashed)
        else:
            models = [by_colour[tuple(line.get_color())] for line in solid]
            assert len(set(FAMILIES[m] for m in models)) <= 3 and len(models) <= 7
            assert [line.get_color() for line in dashed] == ["0.4"]  # the group's mean random baseline
            assert len(axes.collections) == 1  # and its range, a band
    legends = [axes.get_legend() for axes in figure.axes if not axes.axison]
    assert len(legends) == 3
    assert [t.get_text() for t in legends[2].get_texts()][:3] == ["toy_alpha", "toy_beta", "toy_gamma"]
    assert any("random baseline: mean" in t.get_text() for t in legends[0].get_texts())
    check_page(figure, monkeypatch, max_lines=8)


def test_few_models_share_a_panel_with_a_line_style_per_explainer(monkeypatch):
    few = [r for r in board(explainers=("native", "gradcam", "random")) if r.model in ("bcos_cnn", "resnet18")]
    figure = curves_figure(few, ["pixel_removal"])
    (axes,) = [a for a in figure.axes if a.axison]
    styles = sorted({str(line.get_linestyle()) for line in axes.get_lines()})
    assert len(axes.get_lines()) == 6 and styles == ["-", "--", "-."]  # gradcam solid, native dash-dot
    legend = [a for a in figure.axes if not a.axison][0].get_legend()
    assert [t.get_text() for t in legend.get_texts()][:4] == ["bcos_cnn", "resnet18", "gradcam", "native"]
    check_page(figure, monkeypatch, max_lines=8)


def test_curves_whose_x_is_not_a_fraction_are_drawn_as_stored():
    steps = [1.0, 2.0, 3.0, 4.0, 5.0]  # model randomisation: the number of layers randomised
    results = [replace(fake_cell(model, "gradcam", "model_randomisation", [0.2, 0.4], higher=False,
                                 curve=[0.9, 0.7, 0.5, 0.3, 0.1]), curve_x=steps) for model in ("fa_cnn", "resnet18")]
    figure = curves_figure(results, ["model_randomisation"])
    (axes,) = [a for a in figure.axes if a.axison]
    assert [list(line.get_xdata()) for line in axes.get_lines()] == [steps, steps]
    assert axes.get_xlabel() == "layers randomised" and axes.get_ylabel() == "similarity to the original map"
    figure.clf()


def test_insertion_deletion_for_many_models(monkeypatch):
    figure = curves_figure(board(metrics=("insertion", "deletion")), ["insertion", "deletion"])
    panels = [axes for axes in figure.axes if axes.axison]
    assert len(panels) == 18  # 3 groups x 2 metrics x (native, gradcam, random)
    assert panels[3].get_title().startswith("deletion: gradcam (lower is better)")
    check_page(figure, monkeypatch, max_lines=8)


# --- accuracy against faithfulness ------------------------------------------------------------------
def test_accuracy_points_are_numbered_and_the_axes_read_in_their_units(monkeypatch):
    results = board(metrics=("pixel_removal", "infidelity", "constant", "big"), explainers=("native", "random"),
                    curves=False)
    changed = []
    for m, result in enumerate(results):  # infidelity: one huge value; constant: all equal; big: around 1e9
        values = result.per_image
        if result.label == "infidelity":
            scale = 4e9 if (result.model, result.explainer) == ("coda_net", "native") else 1e-3
            values = [scale * (0.5 + 0.01 * i) for i in range(20)]
        elif result.label == "constant":
            values = [0.5] * 20
        elif result.label == "big":
            values = [1e9 + 1e7 * (m % 7) + i for i in range(20)]
        changed.append(replace(result, per_image=values, score=float(np.mean(values))))
    results = changed
    tidy = tidy_table(results)
    table = pivot(tidy)
    figure = accuracy_figure(results, tables=(tidy, table))
    panels = {axes.get_title().split(" ")[0]: axes for axes in figure.axes if axes.axison}
    assert sorted(panels) == ["big", "constant", "infidelity", "pixel_removal"]
    assert panels["infidelity"].get_xscale() == "log" and panels["pixel_removal"].get_xscale() == "linear"
    assert panels["constant"].get_title() == "constant (higher is better); all 0.5"
    assert panels["pixel_removal"].get_yscale() == "logit"  # 11 of 13 models between 0.96 and 0.99
    key = [a for a in figure.axes if not a.axison][0].get_legend()
    entries = [t.get_text() for t in key.get_texts()]
    assert len(entries) == 26 and entries[0] == "1  bcos_cnn · native" and entries[-1] == "26  toy_gamma · random"
    numbered = {int(e.split()[0]): tuple(e.split("  ")[1].split(" · ")) for e in entries}
    rows = table.set_index(["model", "explainer"])
    texts, _ = check_page(figure, monkeypatch)
    for name, axes in panels.items():
        assert axes.xaxis.get_offset_text().get_text() == "" and axes.yaxis.get_offset_text().get_text() == ""
        labels = [t for t in axes.texts if t.get_text().isdigit()]
        assert sorted(int(t.get_text()) for t in labels) == list(range(1, 27))  # every point, once
        for label in labels:  # each number sits on its row's point
            row = rows.loc[numbered[int(label.get_text())]]
            assert label.xy == pytest.approx((row[name], row["accuracy"]))
        boxes = [box for text, box in texts if text in labels]
        clashes = sum(intersection(a, b) > 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert clashes <= 2, name  # numbers kept apart from each other
    ticks = [t.get_text() for t in panels["big"].get_xticklabels() if t.get_text()]
    assert {"1e+09", "1.01e+09", "1.02e+09"} <= set(ticks)  # each tick in full, not as an offset


# --- ranks ----------------------------------------------------------------------------------------
def rank_cells(figure):
    axes = figure.axes[0]
    rows = [t.get_text() for t in axes.get_yticklabels()]
    return rows, {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes.texts}


def test_rank_heatmap_annotations_are_the_pivots_ranks(monkeypatch):
    from interpbench.report.figures import rank_text

    results = [r for r in fake_results() if r.label != "model_randomisation"] + board(
        metrics=("pixel_removal", "deletion"), explainers=("native",), curves=False)[:10]
    tidy = tidy_table(results)
    table = pivot(tidy)
    figure = rank_figure(results, tables=(tidy, table))
    names, cells = rank_cells(figure)
    labels = ["deletion", "insertion", "pixel_removal"]
    keyed = table.set_index(["model", "explainer"])
    assert sorted(names) == sorted(f"{m} · {e}" for m, e in keyed.index)
    means = []
    for i, name in enumerate(names):
        record = keyed.loc[tuple(name.split(" · "))]
        shown = [record[f"{label}_sig_rank"] for label in labels]
        assert [cells[(i, j)] for j in range(3)] == [rank_text(v) for v in shown]
        means.append(np.nanmean(shown))
    assert means == sorted(means)  # rows ordered by mean rank
    assert rank_matrix(table, labels)[2] == {label: "significance" for label in labels}
    check_page(figure, monkeypatch)

    # Without per-image scores (a tidy table read back from a CSV): the rank by mean, marked *.
    tidy.attrs = {}
    plain_table = pivot(tidy)
    figure = rank_figure(results, tables=(tidy, plain_table))
    names, cells = rank_cells(figure)
    record = plain_table.set_index(["model", "explainer"]).loc[tuple(names[0].split(" · "))]
    assert [cells[(0, j)] for j in range(3)] == [rank_text(record[f"{label}_rank"]) for label in labels]
    assert all(t.get_text().endswith("*") for t in figure.axes[0].get_xticklabels())
    assert "rank by mean" in figure.get_suptitle()
    figure.clf()
    with pytest.raises(ValueError, match="a rank heatmap needs more than one metric; these results have "
                                         "pixel_removal"):
        rank_figure([r for r in results if r.label == "pixel_removal"])


# --- saliency grid and morphing ------------------------------------------------------------------
def test_saliency_grid_fits_the_page_in_blocks_and_notes_all_zero_maps(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 3, 8, 8))
    columns = []
    for model in FAMILIES:  # 13 models x 2 explainers, long names
        for explainer in ("integrated_gradients", "native"):
            maps = rng.normal(0, 1, (3, 8, 8)) if explainer == "native" else np.abs(rng.normal(0, 1, (3, 8, 8)))
            columns.append((f"{model}\n{explainer}", maps))
    columns[3][1][2] = 0.0  # bcos_resnet18/native's map of the third image is all zero
    assert grid_blocks([name for name, _ in columns]) == [list(range(0, 10)), list(range(10, 20)),
                                                          list(range(20, 26))]
    figure = saliency_grid(images, ["cat", "dog", "a_long_class_name"], columns)
    notes = [(axes, t) for axes in figure.axes for t in axes.texts if t.get_text() == "all zero"]
    assert len(notes) == 1
    axes = notes[0][0]
    assert axes.images[0].get_array().max() == 0 and axes.images[0].get_clim() == (-1.0, 1.0)
    titled = [a.get_title() for a in figure.axes if a.get_title() and a.get_title() != "image"]
    assert len(titled) == 26 and titled[0] == "bcos_cnn\nintegrated_\ngradients"
    # one colour scale per image, in every block: each image has a signed map
    scales = {a.images[0].get_clim() for a in figure.axes if a.images and a.get_title() != "image"
              and a.images[0].get_array().ndim == 2}
    assert scales == {(-1.0, 1.0)}
    check_page(figure, monkeypatch)


def test_morphing_figure_fits_the_page(monkeypatch):
    layers = list(range(13))
    rng = np.random.default_rng(1)
    morphing = Morphing(layers=layers, depth=12, classes=[0, 1], class_names=["triangle", "crescent"],
                        native={layer: rng.normal(0, 1, (2, 6, 6)) for layer in layers},
                        gradcam={layer: rng.normal(0, 1, (2, 6, 6)) for layer in layers},
                        correlations={c: {layer: 0.5 for layer in layers} for c in (0, 1)})
    figure, correlations = morphing_figure(morphing)
    assert correlations[1][12] == 0.5
    assert [a.get_title() for a in figure.axes[:13]][-1] == "layer 12\n(last)"
    check_page(figure, monkeypatch)


# --- which figures apply ---------------------------------------------------------------------------
def test_figures_that_do_not_apply_are_not_skipped(tmp_path):
    removal = board(metrics=("pixel_removal",), explainers=("native", "random"))
    drawn, skipped = write_figures(removal, tmp_path / "removal", store=tmp_path / "none")
    assert [d.name for d in drawn] == ["pixel_removal_curves", "accuracy_vs_faithfulness"]
    # saliency grid and morphing apply (fa_cnn is here) but have no stored inputs; insertion and
    # deletion, and the rank heatmap of one metric, do not apply
    assert [line.split(":")[0] for line in skipped] == ["saliency_grid", "fa_cnn_morphing"]
    for name in ("pixel_removal_curves", "accuracy_vs_faithfulness"):
        assert png_width((tmp_path / "removal" / f"{name}.png").read_bytes()) <= MAX_WIDTH_PX

    # insertion cells stored without their curves: the figure applies and says why it is missing
    no_curves = [replace(r, curve=None, curve_x=None) if r.label == "insertion" else r
                 for r in fake_results() if r.label in ("insertion", "pixel_removal")]
    context = FigureContext(no_curves, tmp_path, None, None, StoredInputs(no_curves, tmp_path, tmp_path))
    assert {f.__name__: [p.name for p in f(context)] for f in FIGURES}["rank_heatmap"] == ["rank_heatmap"]
    drawn, skipped = write_figures(no_curves, tmp_path / "no_curves", store=tmp_path / "none")
    assert "insertion_deletion: no curves for insertion; labels with curves: pixel_removal" in skipped
    assert "rank_heatmap" in [d.name for d in drawn]
