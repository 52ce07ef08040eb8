"""The preflight table: each job's estimated time and memory before anything runs, the refusal of
a job over the launcher's time limit or the machine's memory, ``--plan`` and ``--force``."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import tiny

from interpbench.engine import preflight as pf
from interpbench.engine.plan import plan_sweep
from interpbench.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
AT_224 = ("zoo=[fa_cnn,resnet18]", "data.image_size=224", "profile.max_image_size=null", "data.num_train=64", "data.num_test=20",
          "profile.eval.num_images=10")


def rows(out):
    """The table's job rows: name -> its columns."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and re.fullmatch(r"[a-z0-9_]+/seed\d+!?", parts[0]) or (len(parts) > 1 and parts[1] == "!"):
            found[parts[0].rstrip("!")] = parts[1:]
    return found


def test_plan_prints_the_table_at_224_px_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(pf.CALIBRATION_ENV, "2e9")  # a known device: 2 G multiply-adds per second
    cfg = tiny(tmp_path, *AT_224, "preflight=plan")
    assert run_sweep(cfg) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert sorted(table) == ["fa_cnn/seed0", "resnet18/seed0"]
    plan = plan_sweep(cfg)
    for name, columns in table.items():
        key = next(k for k, spec in plan.specs.items() if f"{spec.model}/seed{spec.seed}" == name)
        macs = plan.macs[key]
        assert columns[:3] == ["64", "1", f"{macs / 1e6:,.1f}"]  # training images, epochs, MMACs per image
        cells = len(plan.cells[key])
        seconds = (3 * macs * 64 + pf.EVAL_FACTOR * macs * 10 * cells) / 2e9
        assert columns[4] == pf.clock(seconds)
    assert plan.input_size == (3, 224, 224)
    assert "total" in out and not (tmp_path / "store" / "models").exists()  # nothing trained
    assert not (tmp_path / "results").exists()


def test_a_job_over_the_time_limit_is_refused_in_one_line_and_force_runs_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(pf.CALIBRATION_ENV, "1e6")  # a very slow device
    cfg = tiny(tmp_path, *AT_224, "launcher.timeout_min=1")
    assert run_sweep(cfg) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert errors[0].startswith("error: fa_cnn/seed0: estimated ") or errors[0].startswith("error: resnet18/seed0: estimated ")
    assert "exceeds launcher.timeout_min=1 min; raise launcher.timeout_min" in errors[0] and "--force" in errors[0]
    assert not (tmp_path / "store" / "models").exists()
    plan = plan_sweep(cfg)
    todo = list(plan.specs)
    go_on, costs = pf.preflight(plan, todo, todo, plan.cells, tiny(tmp_path, *AT_224, "launcher.timeout_min=1",
                                                                       "preflight=force"), tmp_path / "store")
    assert go_on and all(cost.problems for cost in costs)
    assert "warning (--force): " in capsys.readouterr().out


def test_a_job_over_the_memory_is_refused(tmp_path, capsys, monkeypatch):
    """Peak memory: 4 copies of the parameters + 2 x one image's activations x the training batch;
    with 1 GB per job the ResNet-18's batch of 64 at 224 px does not fit, FA-CNN's batch of 8 does."""
    monkeypatch.setenv(pf.CALIBRATION_ENV, "1e12")
    monkeypatch.setattr(pf, "available_memory", lambda: 2.0 ** 31)  # 2 GB, 1 GB per job
    cfg = tiny(tmp_path, *AT_224, "profile.recipes.resnet_standard.batch_size=64",
               "profile.recipes.fa_minimal.batch_size=8")
    plan = plan_sweep(cfg)
    peak = {plan.specs[k].model: 4 * plan.parameter_bytes[k] + 2 * plan.activation_bytes[k] *
            plan.specs[k].recipe["batch_size"] for k in plan.specs}
    assert peak["resnet18"] > 2.0 ** 30 > peak["fa_cnn"]
    assert run_sweep(cfg) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: resnet18/seed0: estimated peak memory [\d.]+ GB exceeds the 1.0 GB available "
                     r"per job \(2.0 GB / 2 parallel\); lower", err, re.M), err
    assert "fa_cnn/seed0" not in err


def test_activation_bytes_and_the_calibration_are_known(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 2))
    # conv 4x8x8, relu 4x8x8, flatten 256, linear 2: float32
    assert pf.activation_bytes(model, (3, 8, 8)) == 4 * (256 + 256 + 256 + 2)
    first = pf.calibrate(tmp_path)
    assert first > 1e6  # at least a million multiply-adds a second, on any machine
    cached = json.loads((tmp_path / pf.CALIBRATION_FILE).read_text())
    assert [entry["macs_per_s"] for entry in cached.values()] == [first]
    assert pf.calibrate(tmp_path) == first  # read back, not measured again


@pytest.mark.slow
def test_the_plan_flag_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "sweep.py"), f"store={tmp_path / 's'}", "zoo=fa_cnn", "--plan",
         "data.num_train=200", "data.num_test=50", "progress=false"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, pf.CALIBRATION_ENV: "1e9"})
    assert result.returncode == 0, result.stderr
    assert "fa_cnn/seed0" in result.stdout and "est. time" in result.stdout
    assert not (tmp_path / "s" / "models").exists()


def test_the_cpu_profile_works_at_32_px_and_says_so(tmp_path):
    cfg = tiny(tmp_path, "zoo=fa_cnn", "data.image_size=224", "data.num_train=20", "data.num_test=10")
    plan = plan_sweep(cfg)
    assert plan.input_size == (3, 32, 32) and cfg.data.image_size == 32
    assert cfg.profile.image_size_asked == 224 and list(cfg.profile.image_size) == [3, 32, 32]
    from interpbench.report.markdown import sweep_notes
    from interpbench.storage import plain

    notes = sweep_notes(plain(cfg), "abc")
    assert "images at 32 x 32 px (data.image_size=224 asked; the cpu profile works at profile.max_image_size=32" in notes
    paper = tiny(tmp_path, "zoo=fa_cnn", "data.image_size=96", "profile.max_image_size=null", "data.num_train=20",
                 "data.num_test=10")
    assert plan_sweep(paper).input_size == (3, 96, 96)
    assert "; images at 96 x 96 px. Commit" in sweep_notes(plain(paper), "abc")
