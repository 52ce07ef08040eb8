"""Reports: bootstrap intervals, ranks, tables checked against the stored cells, the figures
(FA-CNN's morphing correlation of 1.00 at the last layer), rebuilding from stored results alone,
and the HTML report rendered in headless Chromium."""
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_DATA, TINY_RECIPE, random_fa_cnn

from interpbench.core import CellResult
from interpbench.report.stats import bootstrap_interval, with_interval
from interpbench.report.tables import (
    OVER_IMAGES,
    OVER_SEEDS,
    pivot,
    summary_table,
    tidy_table,
)
from interpbench.report.write import write_leaderboard

ROOT = Path(__file__).resolve().parents[1]
CURVE_X = [0.0, 0.25, 0.5, 0.75, 1.0]


def fake_cell(model, explainer, label, per_image, seed=0, higher=True, metric=None, flag=None, accuracy=0.9,
              curve=None):
    per_image = [None if v != v else float(v) for v in per_image]
    values = np.array([np.nan if v is None else v for v in per_image])
    cell = {"train": {"model": model, "data": {"name": "synthetic"}, "seed": seed}, "explainer": explainer,
            "explainer_args": {}, "metric": metric or label, "metric_args": {}, "num_images": 40,
            "target": "predicted", "eval_seed": 0}
    return CellResult(
        cell=cell, key=f"{model}-{explainer}-{label}-{seed}", model=model, explainer=explainer,
        explainer_label=explainer, metric=metric or label, label=label, higher_is_better=higher, flag=flag,
        data="synthetic", seed=seed, size="cpu", score=float(np.nanmean(values)),
        per_image=per_image, curve_x=CURVE_X if curve else None, curve=curve,
        num_images=len(per_image), test_accuracy=accuracy, model_key=f"{model}-{seed}",
        seconds=1.0, git_commit="abc123", torch=torch.__version__,
    )


def fake_results():
    """Three models, two explainers; pixel_removal (higher better, curves), deletion (lower
    better, curves) and a flagged sanity check."""
    rng = np.random.default_rng(7)
    results = []
    for m, (model, accuracy) in enumerate([("alpha", 0.95), ("beta", 0.80), ("gamma", 0.70)]):
        for e, explainer in enumerate(["native", "random"]):
            quality = 0.9 - 0.2 * m - 0.4 * e  # alpha/native best, gamma/random worst
            removal = np.clip(rng.normal(quality, 0.05, 40), 0, 1)
            results.append(fake_cell(model, explainer, "pixel_removal", removal, accuracy=accuracy,
                                     curve=[1.0, quality + 0.1, quality, quality - 0.1, 0.1]))
            deletion = np.clip(rng.normal(1 - quality, 0.05, 40), 0, 1)
            deletion[3] = np.nan  # an undefined per-image score is skipped
            results.append(fake_cell(model, explainer, "deletion", deletion, higher=False, accuracy=accuracy,
                                     curve=[1.0, 0.6 - quality / 2, 0.4 - quality / 3, 0.2, 0.1]))
            results.append(fake_cell(model, explainer, "insertion", 1 - deletion, accuracy=accuracy,
                                     curve=[0.1, 0.3, 0.5 + quality / 3, 0.8, 0.9]))
        flag = "sanity check failed: maps do not change when the weights are randomised" if model == "beta" else None
        results.append(fake_cell(model, "native", "model_randomisation", rng.uniform(0, 1, 40), higher=False,
                                 flag=flag, accuracy=accuracy))
    return results


def hand_bootstrap(values, resamples=1000, seed=0):
    values = np.asarray(values, dtype=float)
    means = np.empty(resamples)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    for i in range(resamples):
        means[i] = sum(values[j] for j in draws[i]) / len(values)
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


# --- intervals and ranks ----------------------------------------------------------------------
def test_bootstrap_interval_known_cases():
    assert bootstrap_interval([0.4] * 50) == (0.4, 0.4)  # constant scores: zero width
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert all(v != v for v in bootstrap_interval([None, float("nan")]))
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.35, 0.8]
    assert bootstrap_interval(values) == pytest.approx(hand_bootstrap(values), abs=1e-12)
    assert bootstrap_interval(values + [None, float("nan")]) == bootstrap_interval(values)  # undefined skipped
    # Two values: the mean of a resample is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5 and 97.5 percentiles are the two values themselves.
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    # Large samples: close to the normal interval mean +- 1.96 sd / sqrt(n).
    normal = np.random.default_rng(3).normal(2.0, 1.0, 2000)
    low, high = bootstrap_interval(normal)
    expected = 1.96 * normal.std(ddof=1) / np.sqrt(len(normal))
    assert (high - low) / 2 == pytest.approx(expected, rel=0.1)
    assert low < normal.mean() < high


@pytest.mark.parametrize("kwargs, message", [
    ({"resamples": 0}, "resamples must be a positive integer, got 0"),
    ({"level": 95}, "level must be between 0 and 1 (e.g. 0.95), got 95"),
])
def test_bootstrap_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bootstrap_interval([1.0, 2.0], **kwargs)


def test_ranks_follow_each_metrics_direction_and_the_mean_rank():
    results = fake_results()
    table = pivot(tidy_table(results)).set_index(["model", "explainer"])
    # pixel_removal: higher is better; alpha/native has the highest mean.
    removal = table["pixel_removal"].sort_values(ascending=False)
    assert list(table.loc[removal.index, "pixel_removal_rank"]) == [1, 2, 3, 4, 5, 6]
    # deletion: lower is better; ranks ascend with the mean.
    deletion = table["deletion"].sort_values()
    assert list(table.loc[deletion.index, "deletion_rank"]) == [1, 2, 3, 4, 5, 6]
    # model_randomisation exists for native only: the random rows are unranked there.
    assert table["model_randomisation_rank"].isna().sum() == 3
    expected = table[["deletion_rank", "insertion_rank", "model_randomisation_rank", "pixel_removal_rank"]].mean(
        axis=1, skipna=True)
    assert np.allclose(table["mean_rank"], expected)
    chosen = pivot(tidy_table(results), rank_metrics=["pixel_removal"]).set_index(["model", "explainer"])
    assert np.allclose(chosen["mean_rank"], chosen["pixel_removal_rank"])
    with pytest.raises(ValueError, match="unknown rank metric\\(s\\) accuracy; valid metrics: deletion, insertion"):
        pivot(tidy_table(results), rank_metrics=["accuracy"])


def test_ties_share_the_better_rank():
    results = [fake_cell("a", "native", "m", [0.5, 0.7]), fake_cell("a", "gradcam", "m", [0.5, 0.7]),
               fake_cell("b", "native", "m", [0.1, 0.2])]
    table = pivot(tidy_table(results))
    assert list(table["m_rank"]) == [1, 1, 3]  # (a, gradcam), (a, native), (b, native)


def test_several_seeds_interval_is_over_seeds():
    scores = {0: [0.50, 0.60], 1: [0.70, 0.80], 2: [0.60, 0.60]}
    accuracy = {0: 0.80, 1: 0.90, 2: 0.85}
    results = [fake_cell("a", "native", "m", v, seed=s, accuracy=accuracy[s]) for s, v in scores.items()]
    summary = summary_table(tidy_table(results))
    row = summary.iloc[0]
    seed_means = [0.55, 0.75, 0.60]
    assert row["seeds"] == 3 and row["interval"] == OVER_SEEDS
    assert row["mean"] == pytest.approx(np.mean(seed_means))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(hand_bootstrap(seed_means), abs=1e-12)
    table = pivot(tidy_table(results))
    assert table["accuracy"].iloc[0] == pytest.approx(0.85)
    assert (table["accuracy_ci_low"].iloc[0], table["accuracy_ci_high"].iloc[0]) == pytest.approx(
        hand_bootstrap(list(accuracy.values())), abs=1e-12)
    assert table["interval"].iloc[0] == OVER_SEEDS


# --- tables against the stored cells ------------------------------------------------------------
def test_tables_match_the_stored_cells(tmp_path):
    results = fake_results()
    written = write_leaderboard(results, tmp_path / "results", store=tmp_path / "no-store")
    folder = tmp_path / "results" / "synthetic"
    assert written["synthetic/leaderboard.md"] == folder / "leaderboard.md"
    board = pd.read_csv(folder / "leaderboard.csv")
    tidy = pd.read_csv(folder / "leaderboard_tidy.csv")
    cells = pd.read_csv(folder / "cells.csv")
    assert list(zip(board.model, board.explainer)) == [
        ("alpha", "native"), ("alpha", "random"), ("beta", "native"), ("beta", "random"),
        ("gamma", "native"), ("gamma", "random")]
    assert len(cells) == len(results) and len(tidy) == len(results)
    by_cell = {(r.model, r.explainer, r.label): r for r in results}
    for row in board.itertuples(index=False):
        record = dict(zip(board.columns, row))
        assert record["accuracy"] == by_cell[(row.model, row.explainer, "pixel_removal")].test_accuracy
        assert record["interval"] == OVER_IMAGES and record["seeds"] == 1
        for label in ("pixel_removal", "deletion", "insertion", "model_randomisation"):
            cell = by_cell.get((row.model, row.explainer, label))
            if cell is None:
                assert np.isnan(record[label])
                continue
            values = [v for v in cell.per_image if v is not None]
            assert record[label] == pytest.approx(np.mean(values), abs=1e-12)
            low, high = hand_bootstrap(values)
            assert record[f"{label}_ci_low"] == pytest.approx(low, abs=1e-12)
            assert record[f"{label}_ci_high"] == pytest.approx(high, abs=1e-12)
    assert pd.api.types.is_float_dtype(board["pixel_removal"]) and pd.api.types.is_integer_dtype(board["seeds"])

    markdown = (folder / "leaderboard.md").read_text()
    best = by_cell[("alpha", "native", "pixel_removal")]
    low, high = hand_bootstrap(best.per_image)
    # half-width 0.0123: two significant digits, 0.012, and the mean to the same place
    assert (f"{best.score:.3f}", f"{(high - low) / 2:.4f}") == ("0.880", "0.0123")
    line = next(line for line in markdown.splitlines() if line.startswith("| alpha | native |"))
    assert line == ("| alpha | native | **0.950** | **0.102** ± 0.014 (1) | **0.898** ± 0.014 (1) "
                    "| **0.49** ± 0.10 (1) | **0.880** ± 0.012 (1) | **1.0** |")
    assert "pixel_removal ↑" in markdown and "deletion ↓" in markdown and "mean rank ↓" in markdown
    # rows by mean significance rank (1.0, 1.75, 2.5, 3, 5, 6), best first; the CSV keeps them by name
    shown = [tuple(c.strip() for c in line.split("|")[1:3]) for line in markdown.splitlines()
             if line.startswith("| ") and not line.startswith("| model")]
    assert shown == [("alpha", "native"), ("beta", "native"), ("gamma", "native"), ("alpha", "random"),
                     ("beta", "random"), ("gamma", "random")]
    assert markdown.startswith(
        "# Leaderboard: synthetic\n\n- **deletion ↓**: best **alpha × native**, 0.102 ± 0.014, significantly "
        "better than the runner-up beta × native (0.290 ± 0.017; p = 5.5e-11). Accuracy cost: none (alpha is the "
        "most accurate model, 0.950).\n")
    assert ("- **model_randomisation ↓**: best **alpha × native**, 0.49 ± 0.10, tied with beta × native "
            "(0.54 ± 0.10; p = 1) and 1 more row.") in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    beta = next(line for line in markdown.splitlines() if line.startswith("| beta | native |"))
    column = [c.strip() for c in header.split("|")].index("model_randomisation ↓")
    assert [c.strip() for c in beta.split("|")][column].endswith("⚠1")  # the flagged value
    assert sum("⚠" in c for c in beta.split("|")) == 1
    assert "⚠1: sanity check failed: maps do not change when the weights are randomised " \
           "(beta/native (model_randomisation))" in markdown
    assert "bootstrap interval of the mean (1000 resamples, seed 0) over the scored images" in markdown
    info = json.loads((folder / "provenance.json").read_text())
    from importlib.metadata import version

    assert info["cell_git_commits"] == ["abc123"] and info["versions"]["torch"] == version("torch")
    assert info["cells_config"]["seeds"] == [0] and "report_git_commit" in info
    assert json.loads((folder / "cells.json").read_text()) == [r.to_json() for r in sorted(
        results, key=lambda r: (r.model, r.explainer, r.label, str(r.seed), r.key))]
    # Figures from the cells alone; those needing the store are reported as skipped.
    for name in ("pixel_removal_curves", "insertion_deletion", "accuracy_vs_faithfulness"):
        assert (folder / f"{name}.png").stat().st_size > 10_000 and (folder / f"{name}.svg").exists()
    assert not (folder / "saliency_grid.png").exists()
    page = (folder / "report.html").read_text()
    assert ("saliency_grid: no stored figure inputs for alpha/native, beta/native, gamma/native (cells computed "
            "before figure inputs were stored); rerun the sweep") in page and "<script src" not in page


def test_figures_are_registered_functions_that_say_what_applies(tmp_path):
    from interpbench.report.figures import FIGURES, FigureContext, StoredInputs

    assert [f.__name__ for f in FIGURES] == ["metric_curves", "insertion_deletion", "accuracy_vs_faithfulness",
                                             "rank_heatmap", "saliency_grid_figure", "fa_cnn_morphing"]
    removal_only = [r for r in fake_results() if r.label == "pixel_removal"]
    context = FigureContext(removal_only, tmp_path, None, None, StoredInputs(removal_only, tmp_path, tmp_path))
    planned = {f.__name__: [p.name for p in f(context)] for f in FIGURES}
    # one metric: no rank heatmap; no model of the fa_cnn family: no morphing figure
    assert planned == {"metric_curves": ["pixel_removal_curves"], "insertion_deletion": [],
                       "accuracy_vs_faithfulness": ["accuracy_vs_faithfulness"], "rank_heatmap": [],
                       "saliency_grid_figure": ["saliency_grid"], "fa_cnn_morphing": []}
    everything = fake_results() + [fake_cell("fa_cnn", "native", "pixel_removal", [0.5, 0.6])]
    context = FigureContext(everything, tmp_path, None, None, StoredInputs(everything, tmp_path, tmp_path))
    planned = {f.__name__: [p.name for p in f(context)] for f in FIGURES}
    assert planned == {"metric_curves": ["pixel_removal_curves"],
                       "insertion_deletion": ["insertion_deletion"],
                       "accuracy_vs_faithfulness": ["accuracy_vs_faithfulness"], "rank_heatmap": ["rank_heatmap"],
                       "saliency_grid_figure": ["saliency_grid"], "fa_cnn_morphing": ["fa_cnn_morphing"]}


def test_insertion_deletion_figure_has_one_panel_each(tmp_path):
    from interpbench.report.figures import curves_figure

    figure = curves_figure(fake_results(), ["insertion", "deletion"])
    titles = [axes.get_title() for axes in figure.axes if axes.axison]  # the legend's holder has no axis
    assert titles == ["insertion: native (higher is better)", "deletion: native (lower is better)"]
    lines = figure.axes[0].get_lines()
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(lines) == 6 and len(dashed) == 3  # three models: a line each, its random baseline dashed
    assert [line.get_color() for line in dashed] == [line.get_color() for line in lines if line not in dashed]
    assert list(lines[0].get_xdata()) == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert list(lines[0].get_ydata()) == [0.1, 0.3, 0.5 + 0.9 / 3, 0.8, 0.9]  # alpha/native's insertion curve
    with pytest.raises(ValueError, match="no curves for nope; labels with curves: deletion, insertion, pixel_removal"):
        curves_figure(fake_results(), ["nope"])


# --- FA-CNN's morphing -----------------------------------------------------------------------------
def test_layer_gradcam_matches_captum_at_every_layer():
    from captum.attr import LayerGradCam

    from interpbench.engine.figure_inputs import layer_gradcams

    model = random_fa_cnn()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = layer_gradcams(model, x, 3, list(range(model.depth + 1)))
    for layer, (native, gradcam) in maps.items():
        module = model.stem if layer == 0 else model.layers[layer - 1]
        reference = LayerGradCam(model, module).attribute(x, target=3, relu_attributions=False).squeeze(1)
        reference = reference.detach()
        assert torch.allclose(gradcam, reference, rtol=1e-4, atol=1e-7 * float(reference.abs().max())), layer
        assert torch.allclose(native, model.class_maps(x, layer)[:, 3])


def test_morphing_correlation_reads_one_at_the_last_layer():
    from interpbench.engine.figure_inputs import morph_layers, morphing_inputs
    from interpbench.report.figures import morphing_figure, render

    model = random_fa_cnn(depth=6, channels=40)
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert (model.class_maps(x)[:, [0, 2]].flatten(2).std(dim=2) > 1e-4).all()  # maps are not constant
    y = torch.tensor([0, 1, 2] * 4)
    figure, correlations = morphing_figure(morphing_inputs(model, x, y, classes=[0, 2]))
    assert sorted(correlations) == [0, 2] and list(correlations[0]) == [0, 1, 2, 3, 4, 5, 6]
    for per_layer in correlations.values():
        assert per_layer[6] > 1 - 1e-9  # Theorem 1: Grad-CAM = class map / (h w) at the last layer
        assert min(per_layer[layer] for layer in range(6)) < 0.99  # earlier layers differ: not vacuous
    labels = [axes.get_xlabel() for axes in figure.axes]
    assert labels[-1] == "r = 1.00" and labels[13] == "r = 1.00"  # under each class's last pair
    svg = render(figure)["svg"].decode()
    assert svg.count("r = 1.00") >= 2 and "layer 6 (last)" in svg
    assert morph_layers(24) == [0, 3, 6, 9, 12, 15, 18, 21, 24] and morph_layers(9) == list(range(10))
    assert morph_layers(10, every=4) == [0, 4, 8, 10]
    with pytest.raises(ValueError, match=r"no images of class\(es\) \[7\]; classes present: \[0, 1, 2\]"):
        morphing_inputs(model, x, y, classes=[7])
    from interpbench.zoo import create_model

    with pytest.raises(ValueError, match="needs an FA-CNN with the pooling head"):
        morphing_inputs(create_model("fa_cnn_linear", num_classes=10, depth=3, channels=10).eval(), x, y)


def test_saliency_grid_scales_each_row_together():
    from interpbench.engine.figure_inputs import pick_images
    from interpbench.report.figures import normalised, saliency_grid

    maps = np.stack([np.full((4, 4), 2.0), -np.eye(4) * 3.0])
    scaled = normalised(maps)
    assert scaled[0].max() == 1.0 and scaled[1].min() == -1.0 and np.allclose(normalised(np.zeros((1, 2, 2))), 0)
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, 4, 4))
    figure = saliency_grid(images, ["a", "b"], [("m1\nnative", maps), ("m2\ngradcam", np.abs(maps))])
    shown = [axes.images[0] for axes in figure.axes if axes.images][:6]
    assert [image.get_clim() for image in shown[1:3]] == [(0.0, 1.0), (0.0, 1.0)]  # row 1: no negative map
    assert [image.get_clim() for image in shown[4:6]] == [(-1.0, 1.0), (-1.0, 1.0)]  # row 2: one is signed
    assert pick_images([3, 3, 1, 3, 2, 1], 3) == [0, 2, 4] and pick_images([5, 5, 5], 2) == [0, 1]
    with pytest.raises(ValueError, match="column 'x' has 1 maps for 2 images"):
        saliency_grid(images, ["a", "b"], [("x", maps[:1])])


# --- a real tiny store: every figure, the CLI, the browser ------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """An FA-CNN (3 layers, 1 epoch) scored by pixel removal with native, gradcam and random maps."""
    from interpbench.core import Cell, TrainSpec
    from interpbench.engine.evaluate import run_cells
    from interpbench.engine.train import train_model

    root = tmp_path_factory.mktemp("report")
    store = root / "store"
    spec = TrainSpec(model="fa_cnn", data=TINY_DATA, recipe=dict(TINY_RECIPE, epochs=1),
                     model_args={"depth": 3, "channels": 10})
    train_model(spec, store, device="cpu", progress=False)
    cells = [Cell(train=spec, explainer=e, metric="pixel_removal", num_images=40, batch_size=40)
             for e in ("native", "gradcam", "random")]
    results, errors = run_cells(cells, store, device="cpu")
    assert not errors
    sweep = store / "sweeps" / "20260101-000000-test"
    sweep.mkdir(parents=True)
    config = {"results_dir": "results", "seeds": [0], "profile": {"name": "cpu", "eval": {
        "num_images": 40, "target": "predicted"}}}
    (sweep / "sweep.json").write_text(json.dumps({
        "config": config, "git_commit": "abc", "cells": {c.key(): c.path(store).name for c in cells}}))
    return root, store, sweep, list(results.values())


@pytest.fixture(scope="module")
def built_report(tiny_store):
    """``python runners/report.py <sweep folder> --results-dir <dir>`` on the tiny store, in-process."""
    import contextlib
    import io

    from interpbench.report.build import main

    root, store, sweep, results = tiny_store
    out = root / "results"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(sweep), "--results-dir", str(out)]) == 0
    return out, printed.getvalue(), results


def test_report_cli_rebuilds_every_report_from_stored_results_alone(built_report, tmp_path):
    from interpbench.report.build import main

    out, printed, results = built_report
    folder = out / "synthetic"
    assert "# Leaderboard: synthetic" in printed and "report.html" in printed
    board = pd.read_csv(folder / "leaderboard.csv")
    by_explainer = {r.explainer: r for r in results}
    for row in board.itertuples():
        assert row.pixel_removal == pytest.approx(by_explainer[row.explainer].score, abs=1e-12)
        assert row.accuracy == by_explainer[row.explainer].test_accuracy
    # Theorem 1 at work: Grad-CAM ranks pixels as FA-CNN's own maps do, so their rows tie.
    assert board.set_index("explainer").loc["native", "pixel_removal_rank"] == \
        board.set_index("explainer").loc["gradcam", "pixel_removal_rank"] == 1
    figures = json.loads((folder / "figures.json").read_text())
    assert sorted(figures) == ["accuracy_vs_faithfulness", "fa_cnn_morphing", "pixel_removal_curves",
                               "saliency_grid"]
    last = [per[max(per, key=int)] for per in figures["fa_cnn_morphing"]["extra"]["correlations"].values()]
    assert len(last) == 3 and all(r > 1 - 1e-9 for r in last)
    assert (folder / "fa_cnn_morphing.svg").read_text().count("r = 1.00") >= 3
    assert "Profile `cpu`, seeds [0], 40 test images per cell" in (folder / "leaderboard.md").read_text()

    # An unchanged figure is reused; a rebuild from the results folder alone (no store) gives the
    # same tables.
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    before = {name: (folder / name).read_text() for name in
              ("leaderboard.csv", "leaderboard.md", "leaderboard_tidy.csv", "cells.csv", "cells.json")}
    assert main([str(out), "--store", str(tmp_path / "elsewhere")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == stamps
    assert {name: (folder / name).read_text() for name in before} == before
    assert json.loads((folder / "provenance.json").read_text())["sweep_config"]["profile"]["eval"]["num_images"] == 40


def test_report_cli_reports_a_store_and_rejects_a_bad_path(tiny_store, tmp_path, capsys):
    from interpbench.report.build import main

    _, store, _, results = tiny_store
    assert main([str(store), "--results-dir", str(tmp_path / "r"), "--no-figures"]) == 0
    board = pd.read_csv(tmp_path / "r" / "synthetic" / "leaderboard.csv")
    assert sorted(board.explainer) == ["gradcam", "native", "random"]
    capsys.readouterr()
    result = subprocess.run([sys.executable, str(ROOT / "runners" / "report.py"), str(tmp_path / "nothing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path / 'nothing'} is not a folder; give a sweep folder (with "
                             "sweep.json), a results folder (with cells.json) or a store (with cells/)\n")


class DomReader(HTMLParser):
    """The leaderboard's cells ``(data-column, data-value, text)`` per row, and the check's attributes."""

    def __init__(self):
        super().__init__()
        self.rows, self.check, self.images = [], {}, []
        self.table, self.cell, self.text = None, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("id")
        elif tag == "tr" and self.table == "leaderboard-table":
            self.rows.append([])
        elif tag == "td" and self.table == "leaderboard-table":
            self.cell, self.text = attrs, []
        elif tag == "div" and attrs.get("id") == "render-check":
            self.check = attrs
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append((self.cell.get("data-column"), self.cell.get("data-value"), "".join(self.text)))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.text.append(data)


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var out = document.createElement('div');
  out.id = 'render-check';
  out.setAttribute('data-images', images.length);
  out.setAttribute('data-decoded', images.filter(function (i) {
    return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }).length);
  var figures = images.filter(function (i) { return i.hasAttribute('data-figure'); });
  out.setAttribute('data-boxes', figures.map(function (i) {
    var r = i.getBoundingClientRect();
    return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height].map(Math.round).join(' ');
  }).join(','));
  out.setAttribute('data-page-height', document.documentElement.scrollHeight);
  var table = document.getElementById('leaderboard-table');
  out.setAttribute('data-table-height', Math.round(table.getBoundingClientRect().height));
  var header = table.tHead.rows[0].cells[3];
  function column() { return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    return r.cells[3].getAttribute('data-value'); }).join(','); }
  out.setAttribute('data-initial', column());
  header.click();
  out.setAttribute('data-first-click', column());
  header.click();
  out.setAttribute('data-second-click', column());
  document.body.appendChild(out);
});
</script>"""


WIDTH = 1200


def chromium(*arguments, timeout=120):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", *arguments],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(built_report, tmp_path):
    from PIL import Image

    out, _, results = built_report
    folder = out / "synthetic"
    checked = tmp_path / "checked.html"
    broken = '<img alt="a control the check must catch" src="data:image/png;base64,iVBORw0KGgoAAAA">'
    checked.write_text((folder / "report.html").read_text().replace("</body>", broken + CHECK_SCRIPT + "</body>"))
    dom = chromium("--virtual-time-budget=10000", f"--window-size={WIDTH},900", "--dump-dom", checked.as_uri())
    reader = DomReader()
    reader.feed(dom.stdout)
    figures = json.loads((folder / "figures.json").read_text())
    assert reader.check, f"the check script did not run: {dom.stderr[-500:]}"
    assert len(figures) == 4 and int(reader.check["data-images"]) == 5
    assert int(reader.check["data-decoded"]) == 4  # every figure decoded; the broken control was not
    boxes = [[int(v) for v in box.split()] for box in reader.check["data-boxes"].split(",")]
    assert all(width > 300 and height > 150 for _, _, width, height in boxes)  # laid out at a readable size
    assert int(reader.check["data-table-height"]) > 50
    # The leaderboard's numbers are the stored cells' scores, shown to the digits their interval
    # supports (with_interval, known answers in test_report_page.py), with the significance rank.
    by_explainer = {r.explainer: r for r in results}
    board = pd.read_csv(folder / "leaderboard.csv").set_index("explainer")
    assert len(reader.rows) == 4  # the header row and one per explainer
    assert [column for column, _, _ in reader.rows[1]] == ["model", "explainer", "accuracy", "pixel_removal"]
    for row in reader.rows[1:]:
        cells = {column: (value, text) for column, value, text in row}
        cell = by_explainer[cells["explainer"][0]]
        value, text = cells["pixel_removal"]
        assert float(value) == pytest.approx(cell.score, abs=1e-12)
        stored = board.loc[cell.explainer]
        half = (stored["pixel_removal_ci_high"] - stored["pixel_removal_ci_low"]) / 2
        assert text == f"{with_interval(cell.score, half)} ({int(stored['pixel_removal_sig_rank'])})"
        assert float(cells["accuracy"][0]) == cell.test_accuracy
    # Rows by rank, best first; the first click on the (higher is better) column sorts it best
    # first, the second in reverse.
    initial = [float(v) for v in reader.check["data-initial"].split(",")]
    assert initial[0] == max(initial)
    first = [float(v) for v in reader.check["data-first-click"].split(",")]
    second = [float(v) for v in reader.check["data-second-click"].split(",")]
    assert first == sorted(first, reverse=True) and second == first[::-1] and first[0] > first[-1]

    # A screenshot of the whole page: the table and every figure are drawn (many colours where
    # each image was laid out), not left blank.
    height = min(int(reader.check["data-page-height"]), 16000)
    shot = tmp_path / "page.png"
    result = chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{height}", (folder / "report.html").as_uri())
    assert shot.exists(), result.stderr[-500:]
    with Image.open(shot) as image:
        image = image.convert("RGB")
        assert image.size == (WIDTH, height)
        top = image.crop((0, 0, WIDTH, 600))
        assert len(top.getcolors(maxcolors=1_000_000)) > 100  # title, menu and table text
        for left, upper, width, box_height in boxes:
            assert upper + box_height <= height
            region = image.crop((left, upper, min(left + width, WIDTH), upper + box_height))  # a wide one scrolls
            assert len(region.getcolors(maxcolors=1_000_000)) > 200, (left, upper)


def test_a_results_folder_rebuilt_under_results_dir_leaves_the_folder_alone(built_report, tmp_path, capsys):
    from interpbench.report.build import main

    out, _, _ = built_report
    folder = out / "synthetic"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([str(folder), "--results-dir", str(tmp_path / "copy"), "--redraw"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {tmp_path / 'copy' / 'synthetic' / 'report.html'}"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == before
    copied = json.loads((tmp_path / "copy" / "synthetic" / "figures.json").read_text())
    assert sorted(copied) == sorted(json.loads((folder / "figures.json").read_text()))  # its figure inputs found
    assert (tmp_path / "copy" / "synthetic" / "leaderboard.csv").read_text() == (folder / "leaderboard.csv").read_text()
