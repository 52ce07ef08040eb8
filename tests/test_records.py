"""The typed records: CellResult's versioned JSON (round trip, records from before versioning,
schema errors in one line) and a report that refuses to mix evaluation settings."""
import copy
import json
from pathlib import Path

import pytest
import torch

from interpbench.core import CELL_RESULT_VERSION, CellResult, RecordError, explainer_label_of, read_cell_result
from interpbench.report.build import main as report_main
from interpbench.report.write import write_leaderboard

ROOT = Path(__file__).resolve().parents[1]


def record(**changes):
    """A version-1 cell result record as evaluation writes it."""
    cell = {"train": {"model": "fa_cnn", "data": {"name": "synthetic", "num_test": 100, "download": False},
                      "seed": 0, "size": "cpu"},
            "explainer": "rise", "explainer_args": {"num_masks": 50}, "metric": "pixel_removal",
            "metric_args": {}, "num_images": 3, "target": "predicted", "eval_seed": 0}
    out = {"cell": cell, "key": "k1", "model": "fa_cnn", "explainer": "rise",
           "explainer_label": explainer_label_of("rise", cell["explainer_args"]), "metric": "pixel_removal",
           "label": "pixel_removal", "higher_is_better": True, "flag": None, "data": "synthetic", "seed": 0,
           "size": "cpu", "score": 0.5, "per_image": [0.25, None, 0.75], "curve_x": [0.0, 1.0],
           "curve": [1.0, 0.1], "num_images": 3, "test_accuracy": 0.9, "model_key": "m1", "seconds": 1.5,
           "git_commit": "abc", "torch": torch.__version__, "version": CELL_RESULT_VERSION}
    out.update(changes)
    return out


def test_the_explainer_label_names_the_arguments_that_differ_from_the_defaults():
    assert explainer_label_of("rise", {"num_masks": 50}) == "rise(num_masks=50)"
    assert explainer_label_of("rise", {"num_masks": 50, "batch_size": 64}) == "rise(num_masks=50)"  # cost only
    assert explainer_label_of("gradcam", {}) == "gradcam"
    assert explainer_label_of("not_registered", {"a": 1}) == "not_registered"


def test_a_record_round_trips():
    stored = record()
    result = CellResult.from_json(copy.deepcopy(stored))
    assert result.explainer_label == "rise(num_masks=50)" and result.per_image == [0.25, None, 0.75]
    assert result.to_json() == stored
    assert json.loads(json.dumps(result.to_json())) == stored


def test_a_record_from_before_versioning_gets_its_label_and_no_flag():
    """The published CIFAR-10 cells were written before records had a version, a label or a flag."""
    old = record()
    for name in ("version", "explainer_label", "flag"):
        del old[name]
    result = CellResult.from_json(old)
    assert (result.version, result.explainer_label, result.flag) == (CELL_RESULT_VERSION, "rise(num_masks=50)", None)
    published = json.loads((ROOT / "results" / "cifar10" / "cells.json").read_text())
    results = [CellResult.from_json(item) for item in published]
    assert len(results) == 64 and {r.explainer_label for r in results} == {"native", "gradcam", "random"}


@pytest.mark.parametrize("changes, message", [
    ({"score": "high"}, "field score is str, expected float or int or null"),
    ({"higher_is_better": 1}, "field higher_is_better is int, expected bool"),
    ({"seed": True}, "field seed is bool, expected int"),
    ({"per_image": [0.5]}, "1 per-image scores for num_images 3"),
    ({"extra": 1}, "unknown fields extra"),
    ({"version": 7}, "record version 7; this checkout reads 0 and 1"),
])
def test_a_bad_record_is_one_line_naming_the_problem(changes, message):
    with pytest.raises(RecordError) as caught:
        CellResult.from_json(record(**changes), source="cells/x.json")
    assert str(caught.value) == f"cells/x.json: {message}"


def test_a_missing_field_and_a_truncated_file_are_named(tmp_path):
    broken = record()
    del broken["model_key"]
    with pytest.raises(RecordError, match=r"^cells/x.json: missing fields model_key$"):
        CellResult.from_json(broken, source="cells/x.json")
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(record())[:100])
    with pytest.raises(RecordError) as caught:
        read_cell_result(path)
    assert str(caught.value).startswith(f"{path}: not valid JSON (") and "\n" not in str(caught.value)


def scored(key, num_images, model="fa_cnn", target="predicted"):
    per_image = [0.5] * num_images
    stored = record(key=key, model=model, per_image=per_image, num_images=num_images)
    stored["cell"] = dict(stored["cell"], num_images=num_images, target=target)
    return CellResult.from_json(stored)


def test_a_report_refuses_cells_scored_with_different_settings(tmp_path):
    results = [scored("a", 8, model="fa_cnn"), scored("b", 3, model="resnet18")]
    with pytest.raises(ValueError) as caught:
        write_leaderboard(results, tmp_path, figures=False)
    message = str(caught.value)
    assert "\n" not in message and "num_images takes 2 values (8 in fa_cnn/rise(num_masks=50)/pixel_removal; " \
                                   "3 in resnet18/rise(num_masks=50)/pixel_removal)" in message
    assert not list(tmp_path.iterdir())  # nothing written
    # the same settings report together
    assert write_leaderboard([scored("a", 3), scored("b", 3, model="resnet18")], tmp_path, figures=False)


def test_the_report_command_refuses_a_store_with_mixed_settings(tmp_path, capsys):
    store = tmp_path / "store"
    (store / "cells").mkdir(parents=True)
    for result in (scored("a", 8), scored("b", 3, model="resnet18", target="label")):
        (store / "cells" / f"{result.model}-{result.key}.json").write_text(json.dumps(result.to_json()))
    assert report_main([str(store), "--results-dir", str(tmp_path / "out"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cells with different evaluation settings")
    assert "num_images takes 2 values" in err and "target takes 2 values" in err
    assert not (tmp_path / "out").exists()


def test_the_report_command_names_a_corrupt_cell(tmp_path, capsys):
    store = tmp_path / "store"
    (store / "cells").mkdir(parents=True)
    (store / "cells" / "fa_cnn-a.json").write_text(json.dumps(scored("a", 3).to_json())[:-40])
    assert report_main([str(store), "--results-dir", str(tmp_path / "out"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(store / "cells" / "fa_cnn-a.json") in err


def test_a_training_spec_and_a_cell_round_trip_with_their_keys():
    from interpbench.core import Cell, TrainSpec

    parent = TrainSpec("resnet18", {"name": "synthetic", "num_train": 200, "download": True},
                       {"epochs": 1, "lr": 0.1}, size="cpu", model_args={"width": 8}, seed=3)
    spec = TrainSpec("ca_stream_resnet18", {"name": "synthetic", "num_train": 200}, {"epochs": 2}, seed=3,
                     parent=parent)
    cell = Cell(spec, "rise", "pixel_removal", explainer_args={"num_masks": 50}, metric_args={"steps": 5},
                num_images=40, batch_size=20, target="label", eval_seed=2)
    assert TrainSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert Cell.from_json(json.loads(json.dumps(cell.to_json()))) == cell
    # from an identity, as a cell result stores it: the same key (batch_size and download are not in it)
    again = Cell.from_json(cell.identity())
    assert again.key() == cell.key() and again.train.key() == spec.key() and again.batch_size == 250
    assert spec.to_json()["version"] == cell.to_json()["version"] == 1


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("metric"), "cells/x: missing fields metric"),
    (lambda c: c.update(target="both"), "cells/x: target 'both'; valid targets: predicted, label"),
    (lambda c: c["train"].update(seed="0"), "cells/x (train): field seed is str, expected int"),
    (lambda c: c["train"].update(parent={"model": "resnet18"}), "cells/x (train) (parent): missing fields data"),
])
def test_a_bad_cell_record_is_one_line(change, message):
    from interpbench.core import Cell, TrainSpec

    record = Cell(TrainSpec("fa_cnn", {"name": "synthetic"}, {"epochs": 1}), "random", "pixel_removal").to_json()
    change(record)
    with pytest.raises(RecordError) as caught:
        Cell.from_json(record, source="cells/x")
    assert str(caught.value) == message
