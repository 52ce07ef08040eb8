"""Exported maps (:mod:`interpbench.report.export`): one ``.npz`` per cell holding the stored maps
exactly, the test-split ids of the images the evaluation scored, and the cell's settings; computed
from stored results alone."""
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
import torch
from hydra import compose, initialize_config_dir
from interpbench.report.build import export_path
from interpbench.report.export import (
    FORMAT,
    ExportError,
    evaluation_ids,
    export_maps,
    export_name,
    saliency_file,
)

NUM_TEST, NUM_IMAGES = 100, 20
FORBIDDEN = ("interpbench.engine", "interpbench.metrics", "interpbench.launch", "interpbench.sweep",
             "interpbench.cli", "captum", "quantus")


def tiny_config(root: Path):
    """FA-CNN with Grad-CAM and three metrics: average drop explains the true label (its own target),
    average gain and deletion the prediction, so they share one saliency file."""
    from interpbench.cli import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[
            f"store={root / 'store'}", f"results_dir={root / 'results'}", "progress=false", "launcher=debug",
            "zoo=fa_cnn", "explainer=gradcam", "metric=[average_drop,average_gain,deletion]",
            "metrics.average_gain.target=predicted", "data.num_train=100", f"data.num_test={NUM_TEST}",
            f"profile.eval.num_images={NUM_IMAGES}", f"profile.eval.batch_size={NUM_IMAGES}",
            "profile.recipes.fa_minimal.epochs=1", "+model_args.fa_cnn={depth:3,channels:10}"])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(root, store, results folder, cell results) of the tiny sweep."""
    from interpbench.core import CellResult
    from interpbench.sweep import run_sweep

    root = tmp_path_factory.mktemp("export")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_sweep(tiny_config(root)) == 0
    folder = root / "results" / "synthetic"
    results = [CellResult.from_json(r) for r in json.loads((folder / "cells.json").read_text())]
    return root, root / "store", folder, results


def read(path: Path):
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return arrays, json.loads(str(arrays["meta"]))


def test_the_ids_are_the_evaluations_rule_drawn_without_the_dataset():
    from interpbench.engine.evaluate import evaluation_indices

    for num_test, num_images, seed in ((100, 20, 0), (100, 20, 7), (50, 50, 3), (30, 500, 1), (10000, 500, 0)):
        ids = evaluation_ids(num_test, num_images, seed)
        assert ids.dtype == np.int64
        assert np.array_equal(ids, evaluation_indices(num_test, num_images, seed).numpy())
    assert np.array_equal(evaluation_ids(30, 500, 1), np.arange(30))  # the whole split when it is smaller


def test_one_file_per_cell_with_the_stored_maps_the_evaluated_ids_and_the_settings(swept, tmp_path):
    from interpbench.core import Cell
    from interpbench.data import load_dataset
    from interpbench.engine.evaluate import evaluation_images, evaluation_indices
    from interpbench.engine.train import load_trained
    from interpbench.explainers import EXPLAINERS

    _, store, _, results = swept
    assert sorted(r.metric for r in results) == ["average_drop", "average_gain", "deletion"]
    written = export_maps(results, store, tmp_path / "maps")
    assert written == [tmp_path / "maps" / export_name(r) for r in results]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in written)
    cells = {r.metric: Cell.from_json(r.cell) for r in results}
    for r in results:  # named as the cell's result file
        assert export_name(r) == cells[r.metric].path(store).stem + ".npz"
        assert saliency_file(r, store) == cells[r.metric].saliency_path(store)

    dataset = load_dataset(cells["deletion"].train.data)
    expected_ids = evaluation_indices(len(dataset.test), NUM_IMAGES, 0).numpy()
    assert len(dataset.test) == NUM_TEST and not np.array_equal(expected_ids, np.arange(NUM_IMAGES))
    images = evaluation_images(dataset, NUM_IMAGES, 0)
    model = load_trained(cells["deletion"].train, store, dataset, device="cpu")[0]
    with torch.no_grad():
        predicted = model(images["x"]).argmax(1)
    exported = {}
    for r, path in zip(results, written):
        arrays, meta = read(path)
        exported[r.metric] = arrays
        assert sorted(arrays) == ["image_ids", "meta", "saliency", "scores", "targets"]
        stored = torch.load(cells[r.metric].saliency_path(store), map_location="cpu")
        assert arrays["saliency"].dtype == np.float32 and arrays["saliency"].shape == (NUM_IMAGES, 32, 32)
        assert np.array_equal(arrays["saliency"], stored.numpy())  # exactly the stored maps
        assert arrays["image_ids"].dtype == np.int64 and np.array_equal(arrays["image_ids"], expected_ids)
        assert np.array_equal(dataset.test.labels[arrays["image_ids"]].numpy(), images["y"].numpy())
        assert arrays["targets"].dtype == np.int64 and arrays["targets"].tolist() == [-1] * NUM_IMAGES
        assert np.array_equal(arrays["scores"], np.array([np.nan if v is None else v for v in r.per_image]),
                              equal_nan=True)
        # The maps are the explainer's on the test images at those ids, for the class the target rule names.
        classes = dataset.test.labels[arrays["image_ids"]] if r.target == "label" else predicted
        x = dataset.test.images[arrays["image_ids"]].float() / 255.0
        again = EXPLAINERS.create("gradcam").explain_all(model, x, classes, NUM_IMAGES)
        assert torch.allclose(torch.from_numpy(arrays["saliency"]), again, atol=1e-5)
        assert meta == {
            "format": FORMAT, "version": 1, "cell_key": r.key,
            "saliency_key": cells[r.metric].saliency_path(store).stem.rsplit("-", 1)[1],
            "saliency_sha256": meta["saliency_sha256"], "model": "fa_cnn", "model_key": r.model_key, "seed": 0,
            "size": "cpu", "data": {"name": "synthetic", "num_train": 100, "num_test": NUM_TEST, "image_size": 32,
                                    "seed": 0},
            "explainer": "gradcam", "explainer_args": r.explainer_args, "explainer_label": "gradcam",
            "metric": r.metric, "metric_args": r.metric_args, "metric_label": r.label,
            "higher_is_better": r.higher_is_better, "score": r.score, "num_images": NUM_IMAGES,
            "images": NUM_IMAGES, "test_images": NUM_TEST, "eval_seed": 0,
            "target": "label" if r.metric == "average_drop" else "predicted", "targets_known": False,
            "image_ids_rule": meta["image_ids_rule"], "git_commit": r.git_commit, "torch": r.torch}
        assert len(meta["saliency_sha256"]) == 64 and "randperm" in meta["image_ids_rule"]
    # average gain and deletion share their maps (one saliency file), average drop's explain the label
    assert np.array_equal(exported["average_gain"]["saliency"], exported["deletion"]["saliency"])
    assert bool((predicted != images["y"]).any())
    assert not np.array_equal(exported["average_drop"]["saliency"], exported["deletion"]["saliency"])
    # the same stored results give the same bytes
    again = export_maps(results, store, tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_a_missing_or_corrupt_saliency_file_is_named_in_one_line(swept, tmp_path):
    _, store, _, results = swept
    empty = tmp_path / "empty-store"
    missing = saliency_file(results[0], empty)
    with pytest.raises(ExportError) as error:
        export_maps(results, empty, tmp_path / "out")
    assert str(error.value) == (f"{missing}: no stored saliency maps; pass --store with the store that computed "
                                f"these cells (looked in {empty})")
    assert not (tmp_path / "out").exists()  # nothing written
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    bad = saliency_file(results[-1], copy)
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ExportError, match=r"^[^\n]*: size \d+ bytes, manifest says \d+; `interpbench status "
                                          r"--verify store=[^\n]*` quarantines it and the sweep computes it again$"):
        export_maps(results, copy, tmp_path / "out")
    assert bad.exists() and not (tmp_path / "out").exists()  # named, not moved; nothing written
    shutil.copy2(saliency_file(results[-1], store), bad)
    shutil.rmtree(copy / "models")  # without the model's record, the test split's size is unknown
    record = copy / "models" / f"{results[0].model}-{results[0].model_key}" / "record.json"
    with pytest.raises(ExportError, match=rf"^{record}: the model's record is missing, and it gives the size of the "
                                          r"test split that fixes the image ids; pass --store"):
        export_maps(results, copy, tmp_path / "out")


def test_every_path_the_report_reads_exports_the_same_files(swept, tmp_path, monkeypatch):
    _, store, folder, results = swept
    names = sorted(export_name(r) for r in results)
    (sweep,) = (store / "sweeps").iterdir()
    for name, path, given in (("sweep", sweep, None), ("store", store, None), ("results", folder, store),
                              ("nested", folder.parent, store)):
        written = export_path(str(path), str(tmp_path / name), str(given) if given else None)
        assert sorted(p.name for p in written) == names, name
        assert [(tmp_path / name / n).read_bytes() for n in names] == [(tmp_path / "sweep" / n).read_bytes()
                                                                       for n in names]
    # a results folder without --store reads the work directory, which does not hold these maps
    home = tmp_path / "home"
    monkeypatch.setenv("INTERPBENCH_HOME", str(home))
    with pytest.raises(ExportError, match=rf"^{home.resolve()}/saliency/fa_cnn__gradcam-\w+\.pt: no stored "
                                          r"saliency maps; pass --store"):
        export_path(str(folder), str(tmp_path / "none"))


def test_exporting_loads_no_model_dataset_or_explainer(swept, tmp_path):
    """In a fresh interpreter where creating a dataset, a model or an explainer raises, the export of a
    results folder from its store works and imports none of the FORBIDDEN modules."""
    _, store, folder, results = swept
    script = f"""
import json, sys
from interpbench.data import DATASETS
from interpbench.explainers import EXPLAINERS
from interpbench.zoo import MODELS
import interpbench.data
def refuse(*args, **kwargs):
    raise RuntimeError("the export tried to load a dataset, a model or an explainer")
interpbench.data.load_dataset = DATASETS.create = EXPLAINERS.create = MODELS.create = refuse
from interpbench.report.build import export_path
written = export_path(sys.argv[1], sys.argv[2], sys.argv[3])
print("WRITTEN " + json.dumps(sorted(p.name for p in written)))
print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))
"""
    env = dict(os.environ, INTERPBENCH_HOME=str(tmp_path / "no-store"))
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "maps"), str(store)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("WRITTEN", "MODULES")))
    assert json.loads(lines["WRITTEN"]) == sorted(export_name(r) for r in results)
    assert json.loads(lines["MODULES"]) == []


def test_report_export_maps_writes_the_files_or_says_what_to_pass(swept, tmp_path, capsys):
    """``interpbench report <path> --export-maps DIR`` end to end (needs build.py's --export-maps option)."""
    from interpbench.report.build import main

    _, store, folder, results = swept
    (sweep,) = (store / "sweeps").iterdir()
    status = main([str(sweep), "--no-figures", "--results-dir", str(tmp_path / "results"),
                   "--export-maps", str(tmp_path / "maps")])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert f"exported the maps of 3 cells to {tmp_path / 'maps'}" in printed.out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(export_name(r) for r in results)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    status = main([str(copy), "--no-figures", "--store", str(tmp_path / "elsewhere"),
                   "--export-maps", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"error: {tmp_path / 'elsewhere' / 'saliency'}/fa_cnn__gradcam-")
    assert err.endswith("no stored saliency maps; pass --store with the store that computed these cells "
                        f"(looked in {tmp_path / 'elsewhere'})\n") and err.count("\n") == 1
    assert not (tmp_path / "none").exists()
