"""The config's schema (interpbench.config): every bad value and unknown key is one line on stderr,
exit status 2, and nothing is written; valid edge values pass."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from interpbench.cli import CONFIG_DIR, group_options, hydra_entry, register_configs
from interpbench.config import (
    LAUNCHER_SCHEMAS,
    RECIPE,
    RECIPE_OPTIONAL,
    ConfigError,
    check_device,
    validate,
    zoo_sizes,
)
from interpbench.data import DATASETS
from interpbench.engine.plan import plan_sweep
from interpbench.engine.train import OPTIONAL_RECIPE_KEYS, RECIPE_KEYS
from interpbench.launch.base import LAUNCHERS
from interpbench.launch.slurm_client import SLURM_OPTIONS
from interpbench.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available()
TOP_KEYS = ("checkpoint_every_min, data, device, explainer, explainers, launcher, metric, metrics, model_args, plugins, "
            "preflight, profile, progress, results_dir, seeds, store, zoo")


def compose_config(overrides=()):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def places(tmp_path):
    return [f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}"]


def assert_one_error_line(status, err, tmp_path, key, message=None):
    """Exit status 2, exactly one non-empty stderr line that starts with ``error:`` and names ``key``,
    and neither the store nor the results folder was made."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and key in lines[0], lines[0]
    if message is not None:
        assert lines[0] == f"error: {message}"
    assert not (tmp_path / "store").exists() and not (tmp_path / "results").exists()


def sweep_in_process(tmp_path, capsys, *overrides):
    status = run_sweep(compose_config([*places(tmp_path), "progress=false", *overrides]))
    return status, capsys.readouterr().err


def entry_in_process(tmp_path, capsys, monkeypatch, *arguments):
    """``runners/sweep.py <arguments>`` in this process: hydra_entry up to where it exits."""
    monkeypatch.setattr(sys, "argv", ["sweep.py"])
    with pytest.raises(SystemExit) as exit_info:
        hydra_entry(run_sweep, [*places(tmp_path), *arguments])
    return exit_info.value.code, capsys.readouterr().err


def sweep_script(tmp_path, *arguments):
    result = subprocess.run(
        [sys.executable, "runners/sweep.py", "launcher=debug", *arguments, *places(tmp_path), "progress=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=180, check=False)
    return result.returncode, result.stderr


# --- the bad values of the brief, through the script -------------------------------------------

def test_script_rejects_negative_num_images(tmp_path):
    status, err = sweep_script(tmp_path, "profile.eval.num_images=-5")
    assert_one_error_line(status, err, tmp_path, "profile.eval.num_images",
                          "profile.eval.num_images must be >= 1, got -5")


def test_script_rejects_a_misspelt_device(tmp_path):
    status, err = sweep_script(tmp_path, "device=cudaa")
    assert_one_error_line(status, err, tmp_path, "device",
                          "device must be auto, cpu, cuda, cuda:N or mps, got 'cudaa'")


def test_script_rejects_an_unknown_metric_argument_with_the_valid_keys(tmp_path):
    status, err = sweep_script(tmp_path, "metrics.pixel_removal.stepz=3")
    assert_one_error_line(status, err, tmp_path, "metrics.pixel_removal.stepz",
                          "unknown key metrics.pixel_removal.stepz; valid keys: baseline, order, steps, ties")


def test_script_rejects_a_word_for_max_parallel(tmp_path):
    status, err = sweep_script(tmp_path, "launcher=local", "launcher.max_parallel=two")
    assert_one_error_line(status, err, tmp_path, "launcher.max_parallel",
                          "launcher.max_parallel must be an integer, got 'two'")
    assert not list(tmp_path.iterdir())  # no sweep.json anywhere


# --- the bad values of the brief, in process ----------------------------------------------------

@pytest.mark.parametrize("override, key, message", [
    ("profile.recipes.fa_minimal.epochs=-1", "profile.recipes.fa_minimal.epochs",
     "profile.recipes.fa_minimal.epochs must be >= 0, got -1"),
    ("profile.eval.num_images=0", "profile.eval.num_images", "profile.eval.num_images must be >= 1, got 0"),
    ("profile.eval.batch_size=0", "profile.eval.batch_size", "profile.eval.batch_size must be >= 1, got 0"),
    ("data.num_train=0", "data.num_train", "data.num_train must be >= 1, got 0"),
])
def test_bad_values_fail_on_one_line_and_write_nothing(tmp_path, capsys, override, key, message):
    status, err = sweep_in_process(tmp_path, capsys, "launcher=debug", override)
    assert_one_error_line(status, err, tmp_path, key, message)


@pytest.mark.parametrize("override, message", [
    ("launcher.max_parallel=0", "launcher.max_parallel must be >= 1, got 0"),
    ("launcher.max_parallel=two", "launcher.max_parallel must be an integer, got 'two'"),
])
def test_bad_max_parallel_fails_before_the_sweep_folder(tmp_path, capsys, override, message):
    status, err = sweep_in_process(tmp_path, capsys, "launcher=local", override)
    assert_one_error_line(status, err, tmp_path, "launcher.max_parallel", message)


@pytest.mark.skipif(GPU, reason="a GPU is visible: device=cuda is valid here")
def test_cuda_without_a_gpu_fails_on_one_line(tmp_path, capsys):
    status, err = sweep_in_process(tmp_path, capsys, "launcher=debug", "device=cuda")
    assert_one_error_line(status, err, tmp_path, "device")
    assert "no GPU is visible" in err and "device=cpu" in err and "device=auto" in err


def test_cuda_devices_are_checked_against_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no GPU is visible.*use device=cpu or device=auto"):
        check_device("cuda:0")
    check_device("cuda", where_jobs_run="cluster")  # SLURM's jobs run on the GPU nodes, not here
    check_device("auto")
    check_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"^device must be one of cuda:0 to cuda:1 \(2 GPU\(s\) visible\), "
                                          r"got 'cuda:2'$"):
        check_device("cuda:2")
    for bad in ("cuda:", "cuda:x", "gpu", "CPU", 0):
        with pytest.raises(ConfigError, match="^device must be auto, cpu, cuda, cuda:N or mps, got"):
            check_device(bad)


def test_slurm_sweeps_do_not_need_a_gpu_on_the_login_node(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    validate(compose_config(["launcher=slurm", "device=cuda"]))


# --- unknown keys: one line with the valid keys at their place ---------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["metrics.pixel_removal.stepz=3"],
     "unknown key metrics.pixel_removal.stepz; valid keys: baseline, order, steps, ties"),
    (["+metrics.pixel_removal.stepz=3"],
     "unknown key metrics.pixel_removal.stepz; valid keys: baseline, order, steps, ties"),
    (["explainers.gradcam.reluu=true"], "unknown key explainers.gradcam.reluu; valid keys: relu"),
    (["+explainers.gradcam.reluu=true"], "unknown key explainers.gradcam.reluu; valid keys: relu"),
    (["profile.evall.seed=1"], "unknown key profile.evall; valid keys: eval, max_image_size, name, recipes, size"),
    (["+profile.evall.seed=1"], "unknown key profile.evall; valid keys: eval, max_image_size, name, recipes, size"),
    (["profile.eval.num_image=3"],
     "unknown key profile.eval.num_image; valid keys: batch_size, num_images, seed, target"),
    (["profile.recipes.fa_minimal.epoch=3"], "unknown key profile.recipes.fa_minimal.epoch; valid keys: "
     + ", ".join(sorted(RECIPE_KEYS))),  # the keys the cpu profile's recipe holds
    (["profile=paper", "profile.recipes.coda.milestone=[30]"], "unknown key profile.recipes.coda.milestone; "
     "valid keys: " + ", ".join(sorted(RECIPE_KEYS | OPTIONAL_RECIPE_KEYS))),
    (["launcher=local", "launcher.max_paralel=3"],
     "unknown key launcher.max_paralel; valid keys: max_parallel, name, threads_per_job, timeout_min"),
    (["launcher=debug", "+launcher.max_parallel=3"], "unknown key launcher.max_parallel; valid keys: name"),
    (["data.num_trian=3"], "unknown key data.num_trian; valid keys: image_size, name, num_test, num_train, seed"),
    (["+data.num_trian=3"], "unknown key data.num_trian; valid keys: image_size, name, num_test, num_train, seed"),
    (["data=cifar10", "data.num_train=3"], "unknown key data.num_train; valid keys: download, name, root"),
    (["devices=cpu"], "unknown key devices; valid keys: " + TOP_KEYS),
    (["+devices=cpu"], "unknown key devices; valid keys: " + TOP_KEYS),
])
def test_unknown_keys_fail_on_one_line_with_the_valid_keys(tmp_path, capsys, monkeypatch, arguments, message):
    status, err = entry_in_process(tmp_path, capsys, monkeypatch, "launcher=debug", *arguments)
    assert_one_error_line(status, err, tmp_path, message.split(";")[0].split()[-1], message)


def test_unknown_method_names_under_explainers_and_metrics_list_the_methods(tmp_path, capsys, monkeypatch):
    status, err = entry_in_process(tmp_path, capsys, monkeypatch, "metrics.pixel_removl.steps=3")
    assert_one_error_line(status, err, tmp_path, "metrics.pixel_removl")
    assert "valid keys: average_drop, " in err and "pixel_removal, " in err


def test_model_args_stay_free_form_but_need_a_plus(tmp_path, capsys, monkeypatch):
    status, err = entry_in_process(tmp_path, capsys, monkeypatch, "model_args.fa_cnn.depth=3")
    assert_one_error_line(status, err, tmp_path, "model_args.fa_cnn")
    assert "'+model_args.fa_cnn={...}'" in err
    cfg = compose_config(["+model_args.fa_cnn={depth: 3, channels: 10}", "+model_args.resnet18={}"])
    validate(cfg)  # any builder argument; the builder checks them when the sweep is planned


def test_adding_a_key_that_is_there_fails_on_one_line(tmp_path, capsys, monkeypatch):
    status, err = entry_in_process(tmp_path, capsys, monkeypatch, "+profile.eval.seed=1")
    assert_one_error_line(status, err, tmp_path, "profile.eval.seed")


def test_a_multirun_checks_keys_under_every_group_choice(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sweep.py"])
    with pytest.raises(SystemExit) as exit_info:
        hydra_entry(run_sweep, ["-m", *places(tmp_path), "data=synthetic,cifar10", "data.root=x"])
    status, err = exit_info.value.code, capsys.readouterr().err
    assert_one_error_line(status, err, tmp_path, "data.root",
                          "unknown key data.root; valid keys: image_size, name, num_test, num_train, seed")


# --- more rules, checked directly --------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("profile.recipes.bcos.momentum=1", "profile.recipes.bcos.momentum must be in [0, 1), got 1"),
    ("profile.recipes.bcos.momentum=-0.1", "profile.recipes.bcos.momentum must be in [0, 1), got -0.1"),
    ("profile.recipes.bcos.lr=-1e-3", "profile.recipes.bcos.lr must be >= 0, got -0.001"),
    ("profile.recipes.bcos.lr=inf", "profile.recipes.bcos.lr must be a finite number, got inf"),
    ("profile.recipes.bcos.weight_decay=-1", "profile.recipes.bcos.weight_decay must be >= 0, got -1"),
    ("profile.recipes.bcos.batch_size=0", "profile.recipes.bcos.batch_size must be >= 1, got 0"),
    ("profile.recipes.bcos.epochs=1.5", "profile.recipes.bcos.epochs must be an integer, got 1.5"),
    ("profile.recipes.bcos.warmup_epochs=-1", "profile.recipes.bcos.warmup_epochs must be >= 0, got -1"),
    ("profile.recipes.bcos.max_train_images=0",
     "profile.recipes.bcos.max_train_images must be null or an integer >= 1, got 0"),
    ("profile.recipes.bcos.nesterov=maybe", "profile.recipes.bcos.nesterov must be true or false, got 'maybe'"),
    ("profile.recipes.bcos.optimizer=lbfgs", "profile.recipes.bcos.optimizer must be one of sgd, adamw, got 'lbfgs'"),
    ("profile.recipes.bcos.schedule=linear",
     "profile.recipes.bcos.schedule must be one of constant, cosine, step, got 'linear'"),
    ("profile.recipes.bcos.schedule=step", "profile.recipes.bcos: schedule 'step' needs milestones (epochs) and "
     "gamma (the factor at each); missing: milestones, gamma"),
    ("+profile.recipes.bcos.milestones=[10]", "profile.recipes.bcos: milestones applies to schedule 'step' only, got "
     "schedule 'cosine'; set schedule: step or remove milestones"),
    ("profile.recipes.bcos.augment=flip",
     "profile.recipes.bcos.augment must be one of auto, none, crop_flip, got 'flip'"),
    ("~profile.recipes.bcos.lr", "missing key profile.recipes.bcos.lr; profile.recipes.bcos needs "
     + ", ".join(sorted(RECIPE_KEYS))),
    ("profile.size=big", f"profile.size must be one of {', '.join(zoo_sizes())}, got 'big'"),
    ("profile.eval.target=true_label", "profile.eval.target must be one of predicted, label, got 'true_label'"),
    ("profile.eval.seed=0.5", "profile.eval.seed must be an integer, got 0.5"),
    ("seeds=[]", "seeds must be a non-empty list of integers, got []"),
    ("seeds=0", "seeds must be a non-empty list of integers, got 0"),
    ("seeds=[0,one]", "seeds must be a non-empty list of integers, got [0, 'one']"),
    ("progress=sometimes", "progress must be true or false, got 'sometimes'"),
    ("zoo=3", "zoo must be a name, a comma-separated string or a list of names, got 3"),
    ("launcher.timeout_min=0", "launcher.timeout_min must be > 0, got 0"),
    ("launcher.threads_per_job=0", "launcher.threads_per_job must be null or an integer >= 1, got 0"),
    ("data.image_size=0", "data.image_size must be >= 1, got 0"),
    ("data.num_test=many", "data.num_test must be an integer, got 'many'"),
    ("explainers.rise.p=high", "explainers.rise.p must be a number, got 'high'"),
    ("explainers.integrated_gradients.n_steps=2.5",
     "explainers.integrated_gradients.n_steps must be an integer, got 2.5"),
    ("metrics.sufficiency.abs=yes", "metrics.sufficiency.abs must be true or false, got 'yes'"),
    ("metrics.pixel_removal.order=1", "metrics.pixel_removal.order must be a string, got 1"),
    ("+model_args.fa_cnn=3", "model_args.fa_cnn must be a mapping of the model's builder arguments, got 3"),
])
def test_value_rules(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["launcher=local", override]))
    assert str(error.value) == message


@pytest.mark.parametrize("override, message", [
    ("profile.recipes.coda.milestones=[60,30]", "profile.recipes.coda.milestones must be a non-empty list of "
     "increasing epochs (integers >= 1), got [60, 30]"),
    ("profile.recipes.coda.milestones=[0,30]", "profile.recipes.coda.milestones must be a non-empty list of "
     "increasing epochs (integers >= 1), got [0, 30]"),
    ("profile.recipes.coda.milestones=[]", "profile.recipes.coda.milestones must be a non-empty list of "
     "increasing epochs (integers >= 1), got []"),
    ("profile.recipes.coda.milestones=[30.5]", "profile.recipes.coda.milestones must be a non-empty list of "
     "increasing epochs (integers >= 1), got [30.5]"),
    ("profile.recipes.coda.milestones=30", "profile.recipes.coda.milestones must be a non-empty list of "
     "increasing epochs (integers >= 1), got 30"),
    ("profile.recipes.coda.gamma=0", "profile.recipes.coda.gamma must be a number in (0, 1], got 0"),
    ("profile.recipes.coda.gamma=1.5", "profile.recipes.coda.gamma must be a number in (0, 1], got 1.5"),
    ("profile.recipes.coda.gamma=fast", "profile.recipes.coda.gamma must be a number, got 'fast'"),
    ("~profile.recipes.coda.gamma", "profile.recipes.coda: schedule 'step' needs milestones (epochs) and gamma "
     "(the factor at each); missing: gamma"),
    ("profile.recipes.coda.schedule=cosine", "profile.recipes.coda: milestones and gamma apply to schedule 'step' "
     "only, got schedule 'cosine'; set schedule: step or remove milestones, gamma"),
])
def test_step_schedule_rules(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["profile=paper", "launcher=local", override]))
    assert str(error.value) == message


def test_the_paper_profile_holds_the_papers_schedules():
    """Values taken from the papers and their reference code (see paper.yaml's comments)."""
    recipes = compose_config(["profile=paper"]).profile.recipes
    standard = recipes.resnet_standard
    assert (standard.lr, standard.momentum, standard.nesterov, standard.weight_decay, standard.epochs) == \
        (0.1, 0.9, False, 5e-4, 200)
    assert (standard.schedule, list(standard.milestones), standard.gamma) == ("step", [100, 150], 0.1)
    coda = recipes.coda
    assert (coda.lr, coda.batch_size, coda.epochs, coda.schedule) == (2.5e-4, 16, 200, "step")
    assert list(coda.milestones) == list(range(30, 200, 30)) and coda.gamma == 1 / 1.5
    for name in ("fa_minimal", "resnet_minimal"):
        minimal = recipes[name]
        assert (minimal.optimizer, minimal.momentum, minimal.weight_decay, minimal.batch_size, minimal.epochs) == \
            ("sgd", 0.0, 0.0, 100, 300)
    ca = recipes.ca_stream
    assert (ca.optimizer, ca.lr, ca.momentum, ca.weight_decay, ca.epochs) == ("sgd", 0.1, 0.9, 1e-4, 90)
    assert (ca.schedule, list(ca.milestones), ca.gamma) == ("step", [30, 60], 0.1)


def test_the_minimal_resnet_recipe_is_one_override_away(tmp_path):
    cfg = compose_config([*places(tmp_path), "profile=paper", "zoo=resnet18", "explainer=random",
                          "data.num_train=20", "data.num_test=10",
                          "profile.recipes.resnet_standard=${profile.recipes.resnet_minimal}"])
    plan = plan_sweep(cfg)
    (spec,) = plan.specs.values()
    assert spec.recipe == dict(compose_config(["profile=paper"]).profile.recipes.resnet_minimal)
    assert "milestones" not in spec.recipe and spec.recipe["epochs"] == 300


@pytest.mark.parametrize("override, message", [
    ("launcher.time_min=0", "launcher.time_min must be >= 1, got 0"),
    ("launcher.mem_gb=0", "launcher.mem_gb must be null or a number > 0, got 0"),
    ("launcher.group_cells=cell", "launcher.group_cells must be one of explainer, model, got 'cell'"),
    ("launcher.wait=later", "launcher.wait must be true or false, got 'later'"),
    ("launcher.extra_sbatch=5", "launcher.extra_sbatch must be null or a mapping of sbatch flags, got 5"),
    ("launcher.poll_s=-1", "launcher.poll_s must be > 0, got -1"),
])
def test_slurm_option_rules(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["launcher=slurm", override]))
    assert str(error.value) == message


def test_a_bad_interpolation_is_one_line():
    with pytest.raises(ConfigError, match=r"^profile.eval.num_images: cannot be resolved: .*data.num_testt"):
        validate(compose_config(["profile.eval.num_images=${data.num_testt}"]))


# --- valid configs pass ------------------------------------------------------------------------

@pytest.mark.parametrize("data", DATASETS.list())
@pytest.mark.parametrize("profile", group_options()["profile"])
@pytest.mark.parametrize("launcher", group_options()["launcher"])
def test_every_shipped_config_is_valid(data, profile, launcher):
    validate(compose_config([f"data={data}", f"profile={profile}", f"launcher={launcher}", "device=cpu"]))


def test_the_schema_covers_the_recipes_and_the_launchers():
    assert set(RECIPE) == set(RECIPE_KEYS)
    assert set(RECIPE_OPTIONAL) == set(OPTIONAL_RECIPE_KEYS) == {"milestones", "gamma"}
    assert set(LAUNCHER_SCHEMAS) == set(LAUNCHERS)
    assert set(LAUNCHER_SCHEMAS["slurm"]) == set(SLURM_OPTIONS)
    assert zoo_sizes() == ["cpu", "paper"]


def test_valid_edge_values_pass_planning(tmp_path):
    cfg = compose_config([
        *places(tmp_path), "launcher=local", "launcher.max_parallel=1", "launcher.threads_per_job=1",
        "launcher.timeout_min=0.5", "zoo=[resnet18,kmeans_resnet18_b4]", "explainer=gradcam", "seeds=[0]",
        "data.num_train=20", "data.num_test=10", "data.image_size=32", "profile.eval.num_images=1",
        "profile.eval.batch_size=1", "profile.eval.seed=-3", "profile.eval.target=label",
        "profile.recipes.kmeans_fit.epochs=0", "profile.recipes.kmeans_fit.lr=0",
        "profile.recipes.fa_minimal.epochs=0", "profile.recipes.resnet_standard.momentum=0.999",
        "profile.recipes.resnet_standard.max_train_images=1", "profile.recipes.resnet_standard.warmup_epochs=0.5",
        "profile.recipes.resnet_standard.lr=1", "profile.recipes.resnet_standard.batch_size=1",
        "metrics.irof.baseline=0.5", "metrics.infidelity.perturb_patch_sizes=4", "explainers.rise.p=1",
        "explainers.native.layer=3", "device=auto", "+model_args.resnet18={}",
    ])
    validate(cfg)
    plan = plan_sweep(cfg)
    assert {cell.num_images for cell in plan.all_cells} == {1}
    assert {spec.recipe["epochs"] for spec in plan.specs.values()} == {0, 3}
    assert not (tmp_path / "store").exists() and not (tmp_path / "results").exists()
