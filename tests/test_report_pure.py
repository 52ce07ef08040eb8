"""A report is a pure function of stored results: the saliency grid and FA-CNN's morphing figure
are drawn from the figure inputs stored beside the cells, so a results folder alone (no store, no
data, no checkpoint) rebuilds the same tables and the same figures, loading no model, dataset or
explainer and importing none of their code but the registries ``interpbench.core`` reads."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from interpbench.report.inputs import FOLDER, inputs_name, read_figure_inputs, to_bytes

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("leaderboard.csv", "leaderboard_tidy.csv", "cells.csv")
# What a report must not import: the engine (training, evaluation, figure inputs), the metrics,
# the launchers. (``interpbench.core`` imports the explainer registry, and with it the model and
# dataset packages, to label cells recorded before explainer labels were stored; a report imports
# nothing else of them, which test_the_report_modules_import_no_model_dataset_or_explainer_code
# checks in their source, and it calls none of them, which rebuild_elsewhere checks.)
FORBIDDEN = ("interpbench.engine", "interpbench.metrics", "interpbench.launch", "interpbench.sweep",
             "interpbench.cli", "captum", "quantus")
REPORT_MAY_NOT_IMPORT = ("interpbench.data", "interpbench.engine", "interpbench.zoo", "interpbench.explainers",
                         "interpbench.metrics", "interpbench.launch", "interpbench.sweep", "interpbench.cli")


def tiny_config(root: Path):
    from interpbench.cli import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[
            f"store={root / 'store'}", f"results_dir={root / 'results'}", "progress=false", "launcher=debug",
            "zoo=[fa_cnn,vanilla_cnn]", "data.num_train=300", "data.num_test=100", "profile.eval.num_images=50",
            "profile.recipes.fa_minimal.epochs=1", "+model_args.fa_cnn={depth:3,channels:10}",
            "+model_args.vanilla_cnn={depth:3,channels:10}"])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny sweep (FA-CNN with the pooling head, vanilla CNN with a linear head; native, Grad-CAM,
    random; pixel removal) and the report it wrote."""
    from interpbench.sweep import run_sweep

    root = tmp_path_factory.mktemp("pure")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_sweep(tiny_config(root)) == 0
    return root, root / "store", root / "results" / "synthetic"


def cells_of(folder: Path):
    from interpbench.core import CellResult

    return [CellResult.from_json(record) for record in json.loads((folder / "cells.json").read_text())]


def test_figure_inputs_are_stored_beside_the_cells_and_copied_into_the_results(swept):
    from interpbench.core import Cell
    from interpbench.data import load_dataset
    from interpbench.engine.evaluate import evaluation_images
    from interpbench.engine.figure_inputs import pick_images
    from interpbench.engine.train import load_trained
    from interpbench.explainers import EXPLAINERS

    _, store, folder = swept
    results = cells_of(folder)
    groups = {inputs_name(r.cell): r for r in results}
    assert len(groups) == 5  # fa_cnn: native, gradcam, random; vanilla_cnn: gradcam, random
    assert sorted(p.name for p in (store / FOLDER).glob("*.npz")) == sorted(groups)
    assert sorted(p.name for p in (folder / FOLDER).glob("*.npz")) == sorted(groups)
    result = groups[next(name for name in groups if name.startswith("fa_cnn__gradcam-"))]
    cell = Cell.from_json(result.cell)
    assert inputs_name(result.cell) == cell.saliency_path(store).stem + ".npz"  # named by the saliency key
    assert cell.key() == result.key
    dataset = load_dataset(cell.train.data)
    images = evaluation_images(dataset, cell.num_images, cell.eval_seed)
    picked = pick_images(images["y"].tolist(), 4)
    models = {}
    for name, result in groups.items():
        stored = read_figure_inputs(folder / FOLDER / name)
        assert (folder / FOLDER / name).read_bytes() == (store / FOLDER / name).read_bytes()
        assert to_bytes(stored) == (store / FOLDER / name).read_bytes()  # same inputs, same bytes
        assert stored.meta["version"] == 1 and stored.meta["image_positions"] == picked
        assert stored.images.dtype == np.uint8 and stored.images.shape == (4, 3, 32, 32)
        assert np.array_equal(stored.float_images(), images["x"][picked].numpy())
        assert stored.meta["labels"] == images["y"][picked].tolist()
        assert stored.class_names == [dataset.classes[c] for c in stored.meta["labels"]]
        # The maps are the explainer's for the TRUE class, as the report computed them before.
        cell = Cell.from_json(result.cell)
        if cell.train.model not in models:
            models[cell.train.model] = load_trained(cell.train, store, dataset, device="cpu")[0]
        model = models[cell.train.model]
        expected = EXPLAINERS.create(cell.explainer, **result.explainer_args)(
            model, images["x"][picked], images["y"][picked]).detach().double().numpy()
        scale = np.abs(expected).reshape(4, -1).max(axis=1)
        assert np.allclose(stored.map_scales, scale, rtol=1e-4)
        assert np.allclose(stored.maps.astype(float), expected / scale[:, None, None], atol=2e-3)
        if cell.train.model == "fa_cnn":
            morphing = stored.morphing
            assert morphing.layers == [0, 1, 2, 3] and morphing.depth == 3 and morphing.classes == [0, 1, 2]
            assert all(per[3] > 1 - 1e-9 for per in morphing.correlations.values())  # Theorem 1
            assert morphing.native[0].shape == (3, 32, 32) and morphing.gradcam[3].shape == (3, 8, 8)
        else:
            assert stored.morphing is None  # a linear head: no class-aligned channels


def rebuild_elsewhere(folder: Path, target: Path, *arguments: str):
    """``interpbench report <copy of the results folder>`` in a fresh interpreter where loading a
    dataset, a checkpoint, a model or an explainer, or reaching the network, raises, with the store
    out of reach; returns (exit status, the FORBIDDEN modules it imported, what it printed)."""
    shutil.copytree(folder, target / "synthetic")
    script = f"""
import json, socket, sys, urllib.request
import torch
from interpbench.data import DATASETS
from interpbench.explainers import EXPLAINERS
from interpbench.zoo import MODELS
import interpbench.data
def refuse(*args, **kwargs):
    raise RuntimeError("the report tried to load a dataset, a checkpoint, a model or an explainer, or to download")
socket.socket.connect = urllib.request.urlopen = torch.load = refuse
interpbench.data.load_dataset = DATASETS.create = EXPLAINERS.create = MODELS.create = refuse
from interpbench.report.build import main
status = main(json.loads(sys.argv[1]))
print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))
sys.exit(status)
"""
    env = dict(os.environ, INTERPBENCH_HOME=str(target / "no-store"), MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-c", script, json.dumps([str(target), *arguments])],
                            capture_output=True, text=True, cwd=target, env=env, timeout=300, check=False)
    line = next((text for text in result.stdout.splitlines() if text.startswith("MODULES ")), "MODULES null")
    return result.returncode, json.loads(line[len("MODULES "):]), result.stdout + result.stderr


def test_a_results_folder_alone_rebuilds_the_same_tables_and_figures(swept, tmp_path):
    folder = swept[2]
    status, modules, printed = rebuild_elsewhere(folder, tmp_path, "--redraw", "--store", str(tmp_path / "none"))
    assert status == 0, printed[-2000:]
    assert modules == [], f"the report imported {modules}"
    # nothing skipped: insertion and deletion were not asked for, so their figure does not apply
    assert [line for line in printed.splitlines() if line.startswith("figure skipped")] == []
    rebuilt = tmp_path / "synthetic"
    for name in TABLES:
        assert (rebuilt / name).read_bytes() == (folder / name).read_bytes(), name
    figures = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".svg"))
    assert sorted(p.name for p in rebuilt.iterdir() if p.suffix in (".png", ".svg")) == figures
    assert {"saliency_grid.png", "fa_cnn_morphing.png"} <= set(figures)
    assert sorted(json.loads((rebuilt / "figures.json").read_text())) == sorted(
        json.loads((folder / "figures.json").read_text()))
    # Redrawn from the stored inputs, the two figures are the ones the sweep drew.
    for name in ("saliency_grid.svg", "fa_cnn_morphing.svg"):
        assert (rebuilt / name).read_bytes() == (folder / name).read_bytes(), name
    correlations = json.loads((rebuilt / "figures.json").read_text())["fa_cnn_morphing"]["extra"]["correlations"]
    assert len(correlations) == 3 and all(per["3"] > 1 - 1e-9 for per in correlations.values())


def test_without_stored_inputs_the_two_figures_are_skipped_with_a_note(swept, tmp_path):
    _, _, folder = swept
    source = tmp_path / "source"
    shutil.copytree(folder, source)
    shutil.rmtree(source / FOLDER)
    status, modules, printed = rebuild_elsewhere(source, tmp_path / "out", "--redraw")
    assert status == 0 and modules == [], printed[-2000:]
    skipped = [line for line in printed.splitlines() if line.startswith("figure skipped: ")]
    remedy = ("(cells computed before figure inputs were stored); rerun the sweep with an empty store, or run "
              "`python -m interpbench.engine.figure_backfill <store>` and the report again")
    assert skipped == [
        ("figure skipped: saliency_grid: no stored figure inputs for fa_cnn/gradcam, fa_cnn/native, "
         f"vanilla_cnn/gradcam {remedy}"),
        f"figure skipped: fa_cnn_morphing: no stored figure inputs for fa_cnn, vanilla_cnn {remedy}"]
    rebuilt = tmp_path / "out" / "synthetic"
    for name in TABLES:
        assert (rebuilt / name).read_bytes() == (folder / name).read_bytes(), name
    assert sorted(json.loads((rebuilt / "figures.json").read_text())) == ["accuracy_vs_faithfulness",
                                                                           "pixel_removal_curves"]
    assert "saliency_grid: no stored figure inputs for fa_cnn/gradcam" in (rebuilt / "report.html").read_text()


def test_backfill_stores_the_inputs_of_cells_computed_before(swept, tmp_path):
    from interpbench.engine.figure_backfill import main

    store = swept[1]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    shutil.rmtree(copy / FOLDER)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([str(copy)]) == 0
    assert "5 figure-inputs files written" in printed.getvalue()
    for path in (store / FOLDER).glob("*.npz"):
        old, new = read_figure_inputs(path), read_figure_inputs(copy / FOLDER / path.name)
        assert np.array_equal(old.images, new.images) and np.allclose(old.maps, new.maps, atol=2e-3)
        assert {k: v for k, v in old.meta.items() if k != "git_commit"} == \
            {k: v for k, v in new.meta.items() if k != "git_commit"}


def test_the_report_modules_import_no_model_dataset_or_explainer_code():
    import ast

    offenders = []
    for path in sorted((ROOT / "interpbench" / "report").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {name}" for name in names if name.startswith(REPORT_MAY_NOT_IMPORT)]
    assert offenders == []
    script = ("import sys, json, interpbench.report.build; "
              f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_failing_hook_or_a_computed_one_leaves_the_cells_as_they_are(swept, tmp_path, capsys, monkeypatch):
    """Model randomisation explains again with the group's own explainer (``random``'s generator
    goes on from where the maps left it): the hook uses an explainer of its own, so the scores are
    the same with and without it; and when it fails, the cells are computed all the same."""
    import interpbench.engine.figure_inputs as hook
    from interpbench.core import Cell
    from interpbench.engine.evaluate import run_cells

    store = swept[1]
    fa_cnn = next(r for r in cells_of(swept[2]) if r.model == "fa_cnn")
    spec = Cell.from_json(fa_cnn.cell).train
    scores = {}
    for run in ("with", "failing"):
        copy = tmp_path / run
        shutil.copytree(store / "models", copy / "models")
        cell = Cell.from_json(dict(fa_cnn.cell, explainer="random", explainer_args={"seed": 3},
                                       metric="model_randomisation", metric_args={"skip_layers": True}))
        assert cell.train == spec
        if run == "failing":
            monkeypatch.setattr(hook, "figure_inputs", lambda *args: 1 / 0)
        results, errors = run_cells([cell], copy, device="cpu")
        assert not errors
        scores[run] = results[cell.key()].per_image
        stored = list((copy / FOLDER).glob("*.npz")) if (copy / FOLDER).exists() else []
        assert len(stored) == (1 if run == "with" else 0)
    assert scores["with"] == scores["failing"]
    assert "warning: no figure inputs for fa_cnn/random: division by zero" in capsys.readouterr().err


def test_a_file_that_is_not_figure_inputs_is_named_in_one_line(tmp_path):
    from interpbench.report.inputs import FigureInputsError

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FigureInputsError, match=rf"^{bad}: not a figure-inputs file \("):
        read_figure_inputs(bad)
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps({"format": "interpbench.figure_inputs", "version": 9})))
    with pytest.raises(FigureInputsError, match=rf"^{other}: figure-inputs version 9; this checkout reads 1$"):
        read_figure_inputs(other)
