"""The sweep: every config composes, bad names fail cleanly, a tiny sweep runs end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from interpbench.cli import CONFIG_DIR, register_configs
from interpbench.data import DATASETS
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics.base import Metric
from interpbench.sweep import run_sweep
from interpbench.zoo import MODELS

ROOT = Path(__file__).resolve().parents[1]


def compose_config(overrides=()):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny(tmp_path, *overrides):
    """A sweep small enough for a test: 300 training images, one epoch, 50 scored images."""
    return compose_config([
        f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}", "progress=false",
        "data.num_train=300", "data.num_test=100", "profile.eval.num_images=50",
        *(f"profile.recipes.{recipe}.epochs=1" for recipe in
          ("fa_minimal", "resnet_standard", "bcos", "coda", "bcosify", "ca_stream")),
        "+model_args.fa_cnn={depth:3,channels:10}", *overrides,
    ])


@pytest.mark.parametrize("name", DATASETS.list())
def test_every_dataset_is_a_config_option(name):
    cfg = compose_config([f"data={name}"])
    assert cfg.data.name == name
    assert {k: v for k, v in cfg.data.items() if k != "name"} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in DATASETS.defaults(name).items()}


@pytest.mark.parametrize("profile", ["cpu", "paper"])
@pytest.mark.parametrize("launcher", ["local", "debug"])
def test_profiles_hold_a_recipe_for_every_model(profile, launcher):
    from interpbench.engine.train import check_recipe

    cfg = compose_config([f"profile={profile}", f"launcher={launcher}"])
    assert cfg.launcher.name == launcher and cfg.profile.size == profile
    for model in MODELS.list():
        check_recipe(dict(cfg.profile.recipes[MODELS.info(model)["recipe"]]))


def test_every_explainer_and_metric_has_its_arguments_in_the_config():
    cfg = compose_config(["metrics.pixel_removal.order=most_salient_first"])
    assert sorted(cfg.explainers) == EXPLAINERS.list() and sorted(cfg.metrics) == METRICS.list()
    assert cfg.metrics.pixel_removal.order == "most_salient_first"
    assert cfg.explainers.random.seed == 0


@pytest.mark.parametrize("override, message", [
    ("zoo=fa_cnnn", "error: zoo=fa_cnnn: unknown model 'fa_cnnn'. Did you mean fa_cnn"),
    ("explainer=[gradcm]", "error: explainer=gradcm: unknown explainer 'gradcm'. Did you mean gradcam"),
    ("metric=pixel_remove", "error: metric=pixel_remove: unknown metric 'pixel_remove'. Did you mean pixel_removal?"),
    ("metrics.pixel_removal.order=up", "error: metrics.pixel_removal: unknown order 'up'; valid orders:"),
    ("profile.recipes.fa_minimal.optimizer=lbfgs", "error: profile.recipes.fa_minimal.optimizer must be one of sgd, adamw, got 'lbfgs'"),
])
def test_bad_names_fail_on_one_line_and_write_nothing(tmp_path, capsys, override, message):
    status = run_sweep(tiny(tmp_path, override))
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "store").exists() and not (tmp_path / "results").exists()


def test_missing_cifar_offline_fails_on_one_line(tmp_path, capsys):
    status = run_sweep(compose_config([
        "data=cifar10", f"data.root={tmp_path / 'none'}", "data.download=false",
        f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}"]))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "data=synthetic" in err
    assert not (tmp_path / "results").exists()


def test_the_script_reports_bad_names_and_exits_non_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "sweep.py"), "zoo=nope", f"store={tmp_path}/s",
         f"results_dir={tmp_path}/r"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: zoo=nope: unknown model 'nope'.")
    assert f"Valid models: {', '.join(MODELS.list())}" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argument, message", [
    ("data=cifar11", "error: data=cifar11: unknown data; valid choices: cifar10, cifar100, imagefolder, synthetic"),
    ("launcher=slurmm", "error: launcher=slurmm: unknown launcher; valid choices: debug, local, slurm"),
    ("profile=gpu", "error: profile=gpu: unknown profile; valid choices: cpu, paper"),
])
def test_the_script_rejects_unknown_group_options_on_one_line(tmp_path, argument, message):
    result = subprocess.run([sys.executable, str(ROOT / "runners" / "sweep.py"), argument],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr == message + "\n"
    assert list(tmp_path.iterdir()) == []


def test_scored_images_are_a_seeded_sample_across_classes():
    from interpbench.engine.evaluate import evaluation_indices

    indices = evaluation_indices(1000, 50, seed=0)
    assert torch.equal(indices, evaluation_indices(1000, 50, seed=0))
    assert not torch.equal(indices, evaluation_indices(1000, 50, seed=1))
    assert len(set(indices.tolist())) == 50 and torch.equal(indices, indices.sort().values)
    class_sorted_labels = torch.arange(1000) // 100  # an ImageFolder test set: class by class
    assert len(set(class_sorted_labels[indices].tolist())) >= 8
    assert evaluation_indices(30, 50).tolist() == list(range(30))


@pytest.mark.slow
def test_tiny_sweep_end_to_end_then_rerun_reuses_everything(tmp_path, capsys):
    cfg = tiny(tmp_path, "zoo=[fa_cnn,resnet18]", "launcher=debug")
    assert run_sweep(cfg) == 0
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    assert list(zip(board.model, board.explainer)) == [
        ("fa_cnn", "gradcam"), ("fa_cnn", "native"), ("fa_cnn", "random"),
        ("resnet18", "gradcam"), ("resnet18", "random")]
    cells = {(r["model"], r["explainer"]): r for r in
             (json.loads(p.read_text()) for p in (tmp_path / "store" / "cells").glob("*.json"))}
    assert len(cells) == 5
    for row in board.itertuples():
        cell = cells[(row.model, row.explainer)]
        assert row.pixel_removal == pytest.approx(cell["score"], abs=1e-12)
        assert row.accuracy == pytest.approx(cell["test_accuracy"])
        assert cell["score"] == pytest.approx(sum(cell["per_image"]) / 50, abs=1e-5)
        assert cell["curve_x"][0] == 0.0 and cell["curve_x"][-1] == 1.0 and len(cell["curve"]) == 11
    # Theorem 1 at work: Grad-CAM ranks pixels exactly as FA-CNN's own maps do.
    assert cells[("fa_cnn", "native")]["per_image"] == cells[("fa_cnn", "gradcam")]["per_image"]
    markdown = (tmp_path / "results" / "synthetic" / "leaderboard.md").read_text()
    assert "pixel_removal ↑" in markdown and "**" in markdown
    from PIL import Image

    with Image.open(tmp_path / "results" / "synthetic" / "pixel_removal_curves.png") as figure:
        assert figure.size[0] > 500 and figure.size[1] > 300
        assert len(figure.convert("RGB").getcolors(maxcolors=100_000)) > 50  # lines drawn, not blank

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_sweep(cfg) == 0
    out = capsys.readouterr().out
    assert "0 to train" in out and "0 to compute" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed or rewritten
    assert pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv").equals(board)


@pytest.mark.slow
def test_local_launcher_runs_each_job_in_its_own_process(tmp_path, capsys):
    cfg = tiny(tmp_path, "zoo=fa_cnn", "explainer=[native,random]", "launcher=local")
    assert run_sweep(cfg) == 0
    assert len(list((tmp_path / "store" / "cells").glob("*.json"))) == 2
    logs = list((tmp_path / "store" / "sweeps").rglob("*_log.err"))
    assert logs, "submitit wrote no job logs"


@pytest.mark.slow
def test_derived_models_share_one_parent_checkpoint_across_parallel_jobs(tmp_path, capsys):
    cfg = tiny(tmp_path, "zoo=[ca_stream_resnet18,kmeans_resnet18_b4]", "explainer=native", "launcher=local")
    assert run_sweep(cfg) == 0
    models = tmp_path / "store" / "models"
    parents = [p for p in models.iterdir() if p.is_dir() and p.name.startswith("resnet18-")]
    assert len(parents) == 1 and (parents[0] / "model.pt").exists()  # trained once, for both
    parent_key = parents[0].name.split("-", 1)[1]
    records = [json.loads(p.read_text()) for p in models.glob("*/record.json")]
    derived = {r["model"]: r for r in records if r["model"] != "resnet18"}
    assert sorted(derived) == ["ca_stream_resnet18", "kmeans_resnet18_b4"]
    from interpbench.storage import stable_hash

    assert all(stable_hash(r["spec"]["parent"]) == parent_key for r in derived.values())
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    assert sorted(board.model) == ["ca_stream_resnet18", "kmeans_resnet18_b4"]


@pytest.mark.slow
def test_a_failing_cell_leaves_the_others_done_and_the_exit_status_says_so(tmp_path, capsys, monkeypatch):
    class AlwaysFails(Metric):
        name = "always_fails"
        higher_is_better = True

        def compute(self, batch):
            raise RuntimeError("boom: this metric always fails")

    monkeypatch.setitem(METRICS._builders, "always_fails", AlwaysFails)
    monkeypatch.setitem(METRICS._info, "always_fails", {})
    cfg = tiny(tmp_path, "zoo=fa_cnn", "explainer=random", "metric=[pixel_removal,always_fails]",
               "launcher=debug", "+metrics.always_fails={}")
    assert run_sweep(cfg) == 1
    captured = capsys.readouterr()
    assert "boom: this metric always fails" in captured.err
    assert "cell fa_cnn/random/always_fails (fa_cnn__random__always_fails-" in captured.err
    assert "1 of 2 cells failed or are missing" in captured.err
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    assert board.columns.tolist() == [
        "model", "explainer", "seeds", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "pixel_removal",
        "pixel_removal_ci_low", "pixel_removal_ci_high", "pixel_removal_rank", "pixel_removal_sig_rank",
        "pixel_removal_tied_best", "pixel_removal_p_vs_best", "mean_rank", "mean_sig_rank", "interval"]


def test_an_accuracy_near_chance_level_is_said_so():
    from interpbench.sweep import chance_note

    assert "near chance level, 1/10 = 0.100" in chance_note(0.125, 10)
    assert chance_note(0.19, 10) != "" and chance_note(0.1901, 10) == ""  # 0.1 + 0.1 * 0.9
    assert chance_note(0.9, 10) == "" and chance_note(0.56, 2) == ""
    assert "1/2 = 0.500" in chance_note(0.55, 2) and "1/2 = 0.500" in chance_note(0.4, 2)
    assert chance_note(0.1, None) == ""  # a record without the class count


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["debug", "local"])
def test_the_console_shows_each_job_and_ends_with_the_report(tmp_path, capsys, monkeypatch, launcher):
    """Captured (not a terminal): plain progress lines per model job (its training epochs, its
    cells), the leaderboard's top rows, and the report's path on the last line."""
    import interpbench.console as console

    monkeypatch.setattr(console, "POLL_S", 0.05)
    cfg = tiny(tmp_path, "zoo=[fa_cnn,resnet18]", "explainer=[gradcam,random]", f"launcher={launcher}",
               "progress=true")
    assert run_sweep(cfg) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == f"report: {tmp_path / 'results' / 'synthetic' / 'report.html'}"
    assert lines[-2].startswith("4/4 cells done in ")
    for model in ("fa_cnn", "resnet18"):
        assert f"       {model}/seed0: train epoch 1/1" in out  # its training, seen while it ran
        assert any(line.startswith(f"done   {model}/seed0: test accuracy ") and "2/2 cells" in line
                   for line in lines)
    assert "cells 4/4 [####################] 100%  jobs 2/2 done" in out
    top = lines.index(next(line for line in lines if line.startswith("leaderboard synthetic: top 4 of 4 rows")))
    header, first = lines[top + 1].split(), lines[top + 2].split()
    assert header[:4] == ["model", "explainer", "accuracy", "pixel_removal"]
    markdown = (tmp_path / "results" / "synthetic" / "leaderboard.md").read_text().splitlines()
    best_row = next(line for line in markdown if line.startswith("| ") and not line.startswith("| model"))
    assert first[:2] == [cell.strip() for cell in best_row.strip("|").split("|")[:2]]  # the board's first row
    assert "figure skipped" not in out  # nothing asked for was left out
    assert "\x1b[" not in out  # no terminal control codes in a log


def test_plain_console_lines_and_eta_from_measured_progress(tmp_path):
    """The ETA: a job 50 % through after 10 s has 10 s left; a queued job of equal work the same."""
    import io
    import json
    import time

    from interpbench.console import JobView, LiveConsole, clock, describe

    assert clock(None) == "--:--" and clock(75) == "1:15" and clock(3725) == "1:02:05"
    assert clock(3 * 86400 + 5 * 3600 + 59) == "3 d 5 h"
    assert describe({"stage": "train", "epoch": 2, "epochs": 5, "step": 10, "steps": 40, "loss": 1.23456,
                     "accuracy": 0.5}) == "train epoch 2/5 step 10/40  loss 1.235  acc 0.500"
    assert describe({"stage": "explain", "explainer": "gradcam", "images_done": 100, "images": 500,
                     "cells_done": 0, "cells": 3}) == "explain gradcam  images 100/500  cell 1/3"
    status = tmp_path / "a.json"
    now = time.time()
    status.write_text(json.dumps({"stage": "train", "epoch": 1, "epochs": 1, "step": 50, "steps": 100,
                                  "time": now}))
    jobs = [JobView("a", status, train_units=100.0), JobView("b", tmp_path / "b.json", train_units=100.0)]
    stream = io.StringIO()
    view = LiveConsole(jobs, parallel=1, stream=stream, tty=False)
    view.job_started("a")
    jobs[0].started = now - 10.0
    view._refresh()
    assert jobs[0].fraction() == pytest.approx(0.5)
    # a: 10 s spent for half its work, 10 s left; b: 100 units at a's 0.2 s per unit, 20 s
    assert view.eta() == pytest.approx(30.0, abs=0.5)
    view.parallel = 2
    assert view.eta() == pytest.approx(15.0, abs=0.5)
    view._plain()
    assert stream.getvalue() == "       a: train epoch 1/1 step 50/100\n"
    view._plain()  # nothing new: nothing printed
    assert stream.getvalue().count("\n") == 1


def test_checkpoint_every_min_reaches_the_jobs_and_a_bad_value_is_one_line(tmp_path, capsys):
    from interpbench.engine.plan import plan_sweep
    from interpbench.launch.base import SweepWork
    from interpbench.launch.local import model_jobs

    cfg = tiny(tmp_path, "zoo=fa_cnn", "checkpoint_every_min=0.5")
    plan = plan_sweep(cfg)
    work = SweepWork(plan=plan, todo=list(plan.specs), missing=plan.cells, store=tmp_path / "store",
                     sweep_dir=tmp_path / "sweep", cfg=cfg)
    (name, job), = model_jobs(work, threads=1)
    assert name == "fa_cnn/seed0" and job.checkpoint_every_s == 30.0
    assert job.status_file == str(tmp_path / "sweep" / "progress" / "fa_cnn_seed0.json")
    assert run_sweep(tiny(tmp_path, "zoo=fa_cnn", "checkpoint_every_min=-1")) == 2
    assert capsys.readouterr().err == "error: checkpoint_every_min must be >= 0, got -1\n"
