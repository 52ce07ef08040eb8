"""Plugins: a model file of the user's own (``plugins=[path]``) and the entry points of the group
``interpbench.plugins`` register models that sweeps, their job processes and ``status`` find; a
file or entry point that fails is one line (exit status 2)."""
import importlib.metadata
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from interpbench import plugins
from interpbench.cli import CONFIG_DIR, register_configs
from interpbench.config import ConfigError, validate
from interpbench.engine.jobs import ModelJob, TrainJob
from interpbench.engine.plan import plan_sweep
from interpbench.launch.slurm import slurm_stages
from interpbench.plugins import ENTRY_POINT_GROUP, PluginError, load_plugins, plugin_files
from interpbench.sweep import run_sweep, sweep_status
from interpbench.zoo import MODELS
from interpbench.zoo.wrapped import WrappedModel

PLUGIN = '''"""A model of one's own: a small plain CNN, wrapped as a zoo model."""
from torch import nn

from interpbench import wrap
from interpbench.zoo import MODELS


@MODELS.register("{name}", recipe="resnet_standard")
def build(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, size="cpu"):
    net = nn.Sequential(nn.Conv2d(input_size[0], 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return wrap(net, mean=mean, std=std, cam_layer="3", num_classes=num_classes, input_size=input_size)
'''


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test registers into a copy of the model registry and loads its plugins afresh."""
    monkeypatch.setattr(MODELS, "_builders", dict(MODELS._builders))
    monkeypatch.setattr(MODELS, "_info", dict(MODELS._info))
    monkeypatch.setattr(plugins, "_files", {})
    monkeypatch.setattr(plugins, "_entry_points", {})


def forget_plugins(monkeypatch, name):
    """As a new process would start: the plugin's model unknown, no file loaded."""
    monkeypatch.delitem(MODELS._builders, name)
    monkeypatch.delitem(MODELS._info, name)
    monkeypatch.setattr(plugins, "_files", {})


def write_plugin(folder: Path, name: str = "my_cnn", text: str = PLUGIN) -> Path:
    path = folder / f"{name}_models.py"
    path.write_text(text.replace("{name}", name))
    return path


def compose_config(overrides=()):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny(tmp_path, *overrides):
    return compose_config([
        f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}", "progress=false",
        "data.num_train=300", "data.num_test=100", "profile.eval.num_images=20",
        "profile.recipes.resnet_standard.epochs=1", *overrides])


@pytest.mark.slow
def test_a_plugin_model_runs_through_a_sweep_in_job_processes(tmp_path, capsys, monkeypatch):
    path = write_plugin(tmp_path)
    assert "my_cnn" not in MODELS
    cfg = tiny(tmp_path, "zoo=my_cnn", "explainer=[gradcam,random]", "metric=pixel_removal", "launcher=local",
               "launcher.max_parallel=1", f"plugins=['{path}']")
    assert run_sweep(cfg) == 0, capsys.readouterr().err
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    rows = board[board.model == "my_cnn"]
    assert sorted(rows.explainer) == ["gradcam", "random"]
    assert all(math.isfinite(score) and 0 <= score <= 1 for score in rows.pixel_removal)
    assert all(math.isfinite(accuracy) for accuracy in rows.accuracy)
    # the model was trained and scored in submitit's job process, which loaded the file itself
    logs = list((tmp_path / "store" / "sweeps").rglob("*_log.err"))
    assert logs, "submitit wrote no job logs"

    forget_plugins(monkeypatch, "my_cnn")  # `status` in a new process loads the plugins as well
    capsys.readouterr()
    assert sweep_status(cfg) == 0
    assert "sweep status: 2 cells: 2 done, 0 running, 0 failed, 0 missing" in capsys.readouterr().out


def test_a_job_loads_its_plugins_before_it_builds_the_model(tmp_path, monkeypatch):
    """What a launcher's process does first: the files travel with the job as absolute paths."""
    monkeypatch.chdir(tmp_path)
    write_plugin(tmp_path, "job_cnn")
    cfg = tiny(tmp_path, "zoo=job_cnn", "explainer=random", "launcher=slurm", "plugins=[job_cnn_models.py]")
    plan = plan_sweep(cfg)  # relative to the working directory, where the command runs
    stages = slurm_stages(plan, tmp_path / "store", cfg)
    jobs = [task.job for stage in stages for task in stage.tasks]
    assert {type(job) for job in jobs} == {TrainJob, ModelJob}
    assert {job.plugins for job in jobs} == {(str(tmp_path / "job_cnn_models.py"),)}

    forget_plugins(monkeypatch, "job_cnn")
    train = next(job for job in jobs if isinstance(job, TrainJob))
    result = train()  # in this process as a job process would run it: loads, builds, trains
    assert result["model"] == "job_cnn" and math.isfinite(result["test_accuracy"])
    assert "job_cnn" in MODELS and isinstance(MODELS.create("job_cnn"), WrappedModel)


def test_a_missing_plugin_file_is_one_line_and_exit_status_2(tmp_path, capsys):
    missing = tmp_path / "nowhere.py"
    status = run_sweep(tiny(tmp_path, "zoo=resnet18", f"plugins=['{missing}']"))
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"error: plugins: {missing}: no such file ({missing.resolve()})\n"
    assert not (tmp_path / "store").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("import torch\n\nraise RuntimeError('boom: no weights here')\n",
     ", line 3: RuntimeError: boom: no weights here"),
    ("def broken(:\n    pass\n", ", line 1: SyntaxError: "),
    ("import not_a_module_anywhere\n", ", line 1: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("from interpbench.zoo import MODELS\n\n@MODELS.register('resnet18')\ndef mine():\n    pass\n",
     ", line 3: DuplicateNameError: model 'resnet18' is already registered (by interpbench.zoo.resnet)"),
])
def test_a_plugin_that_fails_to_import_is_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "bad_models.py"
    path.write_text(text)
    status = run_sweep(tiny(tmp_path, "zoo=resnet18", f"plugins=['{path}']"))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: plugins: {path}{message}"), err
    assert not (tmp_path / "store").exists()


def test_only_py_files_are_plugins(tmp_path):
    (tmp_path / "models.txt").write_text("")
    with pytest.raises(PluginError, match=r"^plugins: .*models\.txt is not a \.py file$"):
        load_plugins([tmp_path / "models.txt"])


@pytest.mark.parametrize("value, message", [
    ("plugins=my_models.py", "plugins must be a list of paths to .py files, got 'my_models.py'"),
    ("plugins=[1]", "plugins must be a list of paths to .py files, got [1]"),
    ("plugins=null", "plugins must be a list of paths to .py files, got null"),
])
def test_the_config_takes_a_list_of_paths(value, message):
    validate(compose_config(["plugins=[a.py,/b/c.py]"]))
    validate(compose_config([]))
    with pytest.raises(ConfigError) as error:
        validate(compose_config([value]))
    assert str(error.value) == message


def test_a_file_is_loaded_once_per_process(tmp_path, monkeypatch):
    path = write_plugin(tmp_path, "once_cnn")
    monkeypatch.chdir(tmp_path)
    assert plugin_files(["once_cnn_models.py", path]) == (str(path),)  # absolute, each once
    assert load_plugins([path]) == (str(path),)
    assert load_plugins(["once_cnn_models.py", path]) == (str(path),)  # no DuplicateNameError: not imported again
    assert isinstance(MODELS.create("once_cnn", num_classes=3), WrappedModel)


def fake_entry_points(*entries):
    def entry_points(**selection):
        return [entry for entry in entries if entry.group == selection.get("group")]
    return entry_points


def test_entry_points_of_the_group_are_loaded_before_names_resolve(tmp_path, monkeypatch):
    (tmp_path / "ep_models.py").write_text(PLUGIN.replace("{name}", "ep_cnn"))
    (tmp_path / "ep_hook.py").write_text(PLUGIN.replace("{name}", "ep_hook_cnn").replace(
        '@MODELS.register("ep_hook_cnn", recipe="resnet_standard")\n', "") + (
        "\n\ndef register():\n    MODELS.register('ep_hook_cnn', recipe='resnet_standard')(build)\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(
        importlib.metadata.EntryPoint("mine", "ep_models", ENTRY_POINT_GROUP),  # a module: imported
        importlib.metadata.EntryPoint("hook", "ep_hook:register", ENTRY_POINT_GROUP),  # a callable: called
        importlib.metadata.EntryPoint("other", "not_imported_at_all", "some.other.group"),
    ))
    assert "ep_cnn" not in MODELS and "ep_hook_cnn" not in MODELS
    plan = plan_sweep(tiny(tmp_path, "zoo=[ep_cnn,ep_hook_cnn]", "explainer=random", "launcher=debug"))
    assert sorted(spec.model for spec in plan.specs.values()) == ["ep_cnn", "ep_hook_cnn"]
    assert plugins.load_entry_points() == ["mine", "hook"]  # loaded once: the hook is not called again


def test_an_entry_point_that_fails_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(
        importlib.metadata.EntryPoint("broken", "no_such_plugin_module", ENTRY_POINT_GROUP)))
    with pytest.raises(PluginError) as error:
        load_plugins()
    assert str(error.value) == ("entry point broken = no_such_plugin_module (group interpbench.plugins): "
                                "ModuleNotFoundError: No module named 'no_such_plugin_module'")
    assert run_sweep(tiny(tmp_path, "zoo=resnet18")) == 2
    assert capsys.readouterr().err == f"error: {error.value}\n"
