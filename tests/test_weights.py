"""Scoring a model from a weights file: no training, the file's sha256 (not its path) in the cache
key, its origin in the record, and a file that does not fit named in one line before anything runs."""
import json
import shutil

import pytest
import torch
from test_sweep import tiny

from interpbench.engine.plan import plan_sweep
from interpbench.engine.weights import WeightsError, fit_problem, read_state_dict
from interpbench.sweep import run_sweep

FA_ARGS = "depth:3,channels:10"


def with_weights(path, args=FA_ARGS):
    return f"+model_args.fa_cnn={{{args},weights:{path}}}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny FA-CNN trained by a sweep, its record, and its weights saved as a DataParallel
    checkpoint (``state_dict`` with ``module.`` keys, beside a number), as released files often are."""
    root = tmp_path_factory.mktemp("trained")
    assert run_sweep(tiny(root, "zoo=fa_cnn", "explainer=random", "launcher=debug")) == 0
    (folder,) = (root / "store" / "models").glob("fa_cnn-*")
    record = json.loads((folder / "record.json").read_text())
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)["model"]
    path = root / "released.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 12.5}, path)
    return root, record, path


@pytest.mark.slow
def test_a_sweep_scores_the_file_without_training(trained, tmp_path):
    _, record, path = trained
    assert run_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random", "launcher=debug", with_weights(path))) == 0
    (folder,) = (tmp_path / "store" / "models").glob("fa_cnn-*")
    loaded = json.loads((folder / "record.json").read_text())
    assert loaded["test_accuracy"] == record["test_accuracy"]  # the same weights, the same accuracy
    assert loaded["history"] == [] and loaded["train_seconds"] == 0 and loaded["train_images"] == 0
    assert loaded["weights"]["path"] == str(path)
    assert loaded["weights"]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert loaded["spec"]["weights_sha256"] == loaded["weights"]["sha256"] and "recipe" not in loaded["spec"]
    assert not list((tmp_path / "store").rglob("last.pt"))
    board = (tmp_path / "results" / "synthetic" / "leaderboard.csv").read_text()
    assert "fa_cnn,random" in board


@pytest.mark.slow
def test_the_cache_key_follows_the_content_not_the_path(trained, tmp_path):
    _, _, path = trained
    moved = tmp_path / "elsewhere.th"
    shutil.copy(path, moved)

    def key(weights):
        plan = plan_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random", with_weights(weights)))
        (spec,) = plan.specs.values()
        return spec.key()

    assert key(moved) == key(path)
    state = torch.load(moved, weights_only=True)
    state["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, moved)
    assert key(moved) != key(path)
    assert key(path) != plan_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random")).all_cells[0].train.key()


@pytest.mark.slow
def test_weights_that_do_not_fit_are_one_line_before_anything_is_written(trained, tmp_path, capsys):
    _, _, path = trained
    status = run_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random", with_weights(path, "depth:6,channels:10")))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: model_args.fa_cnn.weights: weights {path} do not fit fa_cnn: missing ")
    assert not (tmp_path / "store" / "models").exists() and not (tmp_path / "results").exists()
    status = run_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random", with_weights(tmp_path / "nope.th")))
    assert status == 2 and capsys.readouterr().err == (
        f"error: model_args.fa_cnn.weights: no weights file {tmp_path / 'nope.th'}\n")


def test_the_fit_check_names_missing_unexpected_and_misshaped_keys():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1)}
    assert fit_problem(model, state) == (
        "missing 1.weight, 1.bias; unexpected 2.weight; mis-shaped 0.weight [3, 5] in the file, [3, 4] in the model")
    assert fit_problem(model, model.state_dict()) is None


def test_unreadable_weights_are_one_line(tmp_path):
    path = tmp_path / "w.th"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path)
    assert str(caught.value).startswith(f"cannot read weights {path} (") and "\n" not in str(caught.value)
    torch.save({"epoch": 3}, path)
    with pytest.raises(WeightsError, match="hold no state dict"):
        read_state_dict(path)


def test_model_args_override_the_datas_statistics():
    """Weights trained with other normalisation: ``+model_args.<model>={mean: ..., std: ...}``."""
    from interpbench.core import TrainSpec
    from interpbench.data import load_dataset
    from interpbench.engine.train import build_model

    data = {"name": "synthetic", "num_train": 20, "num_test": 10}
    spec = TrainSpec("fa_cnn", data, {}, model_args={"depth": 3, "channels": 10, "mean": [0.485, 0.456, 0.406],
                                                       "std": [0.229, 0.224, 0.225]})
    model = build_model(spec, load_dataset(data))
    assert model.config["mean"] == (0.485, 0.456, 0.406) and model.config["std"] == (0.229, 0.224, 0.225)


def test_a_derived_model_with_its_own_weights_needs_no_parent(tmp_path):
    from interpbench.data import load_dataset
    from interpbench.engine.train import build_model

    cfg = tiny(tmp_path, "zoo=ca_stream_resnet18", "explainer=random")
    (spec,) = plan_sweep(cfg).specs.values()
    assert spec.parent is not None and spec.depth == 1  # without weights: built on its trained parent
    path = tmp_path / "ca_stream.pt"
    torch.save(build_model(spec, load_dataset(dict(cfg.data))).state_dict(), path)
    (loaded,) = plan_sweep(tiny(tmp_path, "zoo=ca_stream_resnet18", "explainer=random",
                                f"+model_args.ca_stream_resnet18={{weights:{path}}}")).specs.values()
    assert loaded.parent is None and loaded.depth == 0 and loaded.weights["path"] == str(path)
