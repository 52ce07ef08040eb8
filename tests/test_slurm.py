"""Sweeps on a real SLURM cluster: the single-node cluster of runners/slurm/local_cluster.sh, with
job accounting (slurmctld, slurmd, slurmdbd, munged, mariadbd on this machine).

Job arrays with a train-then-evaluate dependency give the local launcher's leaderboard number for
number; cancelled tasks are resubmitted alone on a rerun and finished cells are kept; a training
task sent SLURM's preemption signal requeues itself and resumes to the uninterrupted weights; a
failing model is reported with its log and error while the others finish; sweeps sharing cells
never compute one twice. Marked ``slurm``; skipped, with the reason, where the cluster cannot
start (not root, no SLURM and no apt-get to install it, a real cluster's configuration present).
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_sweep import compose_config, tiny

from interpbench.sweep import run_sweep, sweep_status

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "runners" / "slurm" / "local_cluster.sh"


@pytest.fixture(scope="session")
def cluster():
    """The local cluster, started (and stopped again at the end) unless it is already up."""
    if subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster is not running and only root can start it "
                    "(runners/slurm/local_cluster.sh start)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode:
        pytest.skip("the local SLURM cluster cannot start: " + started.stderr.strip().splitlines()[-1])
    yield
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=300)


def arguments(tmp_path, *overrides):
    """The command line of test_sweep's ``tiny`` sweep on the local cluster: one CPU per task, no
    GPU, no memory request, quick polling."""
    return [
        f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}", "progress=false",
        "data.num_train=300", "data.num_test=100", "profile.eval.num_images=50",
        *(f"profile.recipes.{recipe}.epochs=1" for recipe in
          ("fa_minimal", "resnet_standard", "bcos", "coda", "bcosify", "ca_stream")),
        "+model_args.fa_cnn={depth:3,channels:10}",
        "launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.mem_gb=null",
        "launcher.time_min=30", "launcher.poll_s=1", *overrides,
    ]


def on_slurm(tmp_path, *overrides):
    return compose_config(arguments(tmp_path, *overrides))


def records(store):
    """The SLURM tasks of each run of a sweep, oldest submission first."""
    runs = [json.loads(path.read_text())["tasks"] for path in store.glob("sweeps/*/slurm.json")]
    return sorted(runs, key=lambda tasks: min(task["submitted"] for task in tasks))


def cell_files(store):
    return {path.name: path.stat().st_mtime_ns for path in (store / "cells").glob("*.json")}


def sacct(*arguments):
    answer = subprocess.run(["sacct", "--parsable2", "--noheader", "-X", *arguments],
                            capture_output=True, text=True, check=True)
    return [line.split("|") for line in answer.stdout.splitlines() if line]


def in_background(cfg):
    """``run_sweep(cfg)`` in a thread; the returned dict gets its exit status under "status"."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("status", run_sweep(cfg)), daemon=True)
    thread.start()
    return thread, out


def wait_until(condition, seconds=300.0, what="condition"):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.1)


def fake_slurm_commands(tmp_path, monkeypatch):
    """SLURM's commands on the PATH (they fail if called): enough to build executors."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for command in ("sbatch", "srun", "squeue", "scontrol"):
        (folder / command).write_text("#!/bin/sh\nexit 1\n")
        (folder / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_launcher_options_become_sbatch_flags(tmp_path, monkeypatch):
    from interpbench.launch.slurm_client import check_slurm, slurm_executor
    from interpbench.storage import plain

    fake_slurm_commands(tmp_path, monkeypatch)
    cfg = compose_config([
        "launcher=slurm", "launcher.partition=gpu", "launcher.account=lab", "launcher.qos=high",
        "launcher.gpus_per_node=4", "launcher.cpus_per_task=16", "launcher.mem_gb=64", "launcher.time_min=90",
        "launcher.array_parallelism=5", 'launcher.setup=["module load cuda/12.4"]',
        "launcher.extra_sbatch={constraint: a100, exclusive: true}"])
    options = plain(cfg.launcher)
    assert cfg.launcher.name == "slurm" and check_slurm() is None
    executor = slurm_executor(tmp_path / "jobs", options, "eval", dependency="afterany:12")
    executor.parameters["map_count"] = 8  # as for an array of 8 tasks
    script = executor._make_submission_file_text("python job.py", "uid").splitlines()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=65536MB",
                 "#SBATCH --time=90", "#SBATCH --array=0-7%5", "#SBATCH --dependency=afterany:12",
                 "#SBATCH --job-name=interpbench-eval", "#SBATCH --requeue", "#SBATCH --signal=USR2@120",
                 "#SBATCH --constraint=a100", "#SBATCH --exclusive", "module load cuda/12.4"]:
        assert line in script
    cpu = plain(compose_config(["launcher=slurm", "launcher.gpus_per_node=0", "launcher.mem_gb=null"]).launcher)
    text = slurm_executor(tmp_path / "jobs", cpu, "train")._make_submission_file_text("python job.py", "uid")
    assert "--gpus-per-node" not in text and "--mem" not in text and "--dependency" not in text


@pytest.mark.parametrize("override, message", [
    ("launcher.group_cells=cell", "error: launcher.group_cells must be one of explainer, model, got 'cell'"),
    ("+launcher.partitions=gpu", "error: unknown key launcher.partitions; valid keys: account, array_parallelism,"),
    ("launcher.time_min=0", "error: launcher.time_min must be >= 1, got 0"),
    ("launcher.cpus_per_task=two", "error: launcher.cpus_per_task must be null or an integer, got 'two'"),
    ("launcher.extra_sbatch=5", "error: launcher.extra_sbatch must be null or a mapping of sbatch flags, got 5"),
])
def test_bad_slurm_options_fail_on_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, override, message):
    fake_slurm_commands(tmp_path, monkeypatch)
    assert run_sweep(tiny(tmp_path, "launcher=slurm", override)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "store").exists() and not (tmp_path / "results").exists()


def test_without_slurm_the_launcher_says_so_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun, squeue or scontrol
    assert run_sweep(tiny(tmp_path, "launcher=slurm")) == 2
    err = capsys.readouterr().err
    assert err == ("error: launcher=slurm: sbatch, srun, squeue, scontrol not found on this machine; run the "
                   "sweep where SLURM's commands are (a login node), or use launcher=local; "
                   "runners/slurm/local_cluster.sh start makes a one-machine cluster\n")
    assert not (tmp_path / "store").exists()


def test_claimed_cells_are_computed_by_one_holder_only(tmp_path):
    """The per-cell lock behind 'two sweeps sharing cells never write the same file twice'."""
    from conftest import TINY_DATA, TINY_RECIPE

    from interpbench.core import Cell, CellResult, TrainSpec
    from interpbench.engine.jobs import claim_cells

    cell = Cell(train=TrainSpec(model="fa_cnn", data=TINY_DATA, recipe=TINY_RECIPE), explainer="random",
                metric="pixel_removal")
    store = str(tmp_path)
    seen = {}

    def second():
        with claim_cells([cell], store) as pending:  # blocks until the first holder is done
            seen["pending"] = list(pending)

    with claim_cells([cell], store) as pending:
        assert pending == [cell]
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and "pending" not in seen  # still waiting on the lock
        cell.path(store).parent.mkdir(parents=True)
        cell.path(store).write_text(json.dumps(CellResult(  # a result that fits the schema
            cell=cell.identity(), key=cell.key(), model="fa_cnn", explainer="random", explainer_label="random",
            metric="pixel_removal", label="pixel removal", higher_is_better=True, flag=None, data="synthetic",
            seed=0, size="cpu", score=0.5, per_image=[0.5], curve_x=None, curve=None, num_images=1,
            test_accuracy=0.5, model_key=cell.train.key(), seconds=0.0, git_commit="x", torch="x").to_json()))
    thread.join(timeout=30)
    assert seen["pending"] == []  # the result exists: nothing left for the second holder


@pytest.mark.slurm
@pytest.mark.slow
def test_job_arrays_give_the_local_leaderboard_number_for_number(cluster, tmp_path, capsys):
    common = ("zoo=fa_cnn", "seeds=[0,1,2]")  # 3 models to train, 9 cells (native, gradcam, random)
    assert run_sweep(tiny(tmp_path / "local", *common, "launcher=local", "launcher.threads_per_job=1")) == 0
    # One evaluation task per model here (3 tasks of 3 cells: fewer processes to start); the
    # other tests use the default, one task per model and explainer.
    cfg = on_slurm(tmp_path / "slurm", *common, "launcher.group_cells=model")
    assert run_sweep(cfg) == 0
    out = capsys.readouterr().out

    (tasks,) = records(tmp_path / "slurm" / "store")
    train = [t for t in tasks if t["stage"] == "train"]
    evaluation = [t for t in tasks if t["stage"] == "eval"]
    train_array, eval_array = train[0]["job_id"].split("_")[0], evaluation[0]["job_id"].split("_")[0]
    assert sorted(t["job_id"] for t in train) == [f"{train_array}_{i}" for i in range(3)]
    assert sorted(t["job_id"] for t in evaluation) == [f"{eval_array}_{i}" for i in range(3)]
    assert {t["after"] for t in evaluation} == {f"afterany:{train_array}"}
    assert sorted(len(t["cells"]) for t in evaluation) == [3, 3, 3]  # all cells of one model each
    assert f"submitted eval: job array {eval_array} with 3 task(s), after afterany:{train_array}" in out
    script = (Path(evaluation[0]["folder"]) / f"{eval_array}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%" in script and f"#SBATCH --dependency=afterany:{train_array}" in script
    states = {job: (state, start, end) for job, state, start, end in
              sacct("-o", "JobID,State,Start,End", "-j", f"{train_array},{eval_array}")}
    assert {state for state, _, _ in states.values()} == {"COMPLETED"} and len(states) == 6
    last_training_end = max(states[t["job_id"]][2] for t in train)
    assert all(states[t["job_id"]][1] >= last_training_end for t in evaluation)  # the dependency held
    # Each task reported its progress into the sweep's folder in the shared store, as a local job
    # does: where the console reads it while it waits.
    from interpbench import progress
    from interpbench.console import status_file

    sweep_dir = Path(train[0]["folder"]).parent
    for task in train + evaluation:
        report = progress.read(status_file(sweep_dir / "progress", task["name"]))
        assert report is not None and report["job"] == task["name"], task["name"]
        assert report["stage"] == ("trained" if task in train else "metric")
    reported = sorted(progress.read(status_file(sweep_dir / "progress", t["name"]))["test_accuracy"] for t in train)
    recorded = sorted(json.loads(p.read_text())["test_accuracy"]
                      for p in (tmp_path / "slurm" / "store" / "models").glob("*/record.json"))
    assert reported == recorded and len(reported) == 3

    boards = [pd.read_csv(tmp_path / name / "results" / "synthetic" / "leaderboard.csv") for name in ("local", "slurm")]
    assert len(boards[0]) == 3 and boards[0].equals(boards[1])
    cells = [pd.read_csv(tmp_path / name / "results" / "synthetic" / "cells.csv").drop(columns="git_commit")
             for name in ("local", "slurm")]
    assert len(cells[0]) == 9 and cells[0].equals(cells[1])
    for path in (tmp_path / "local" / "store" / "cells").glob("*.json"):
        local, slurm = json.loads(path.read_text()), json.loads((tmp_path / "slurm" / "store" / "cells" / path.name).read_text())
        assert (local["per_image"], local["curve"], local["test_accuracy"]) == \
               (slurm["per_image"], slurm["curve"], slurm["test_accuracy"])

    status = subprocess.run([sys.executable, str(ROOT / "runners" / "sweep.py"),
                             *arguments(tmp_path / "slurm", *common), "--status"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("sweep status: 9 cells: 9 done, 0 running, 0 failed, 0 missing")


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_tasks_are_resubmitted_alone_and_finished_cells_are_kept(cluster, tmp_path, capsys):
    cfg = on_slurm(tmp_path, "zoo=fa_cnn", "seeds=[0,1]", "launcher.array_parallelism=2")  # 6 cells
    store = tmp_path / "store"
    thread, first = in_background(cfg)
    wait_until(lambda: cell_files(store), what="the first cell")
    (tasks,) = records(store)
    evaluation = {t["job_id"]: t for t in tasks if t["stage"] == "eval"}
    queue = subprocess.run(["squeue", "--noheader", "--array", "-o", "%i|%T", "-j",
                            next(iter(evaluation)).split("_")[0]], capture_output=True, text=True, check=True)
    states = dict(line.split("|") for line in queue.stdout.split())
    pending = sorted(job for job, state in states.items() if state == "PENDING")
    running = sorted(job for job, state in states.items() if state == "RUNNING")
    assert pending, f"no pending task to cancel: {states}"
    subprocess.run(["scancel", *pending], check=True)  # part of the array, mid-run: the waiting
    subprocess.run(["scancel", *running[:1]])  # tasks and one running (it may just have finished)
    thread.join(timeout=600)
    assert first["status"] == 1
    err = capsys.readouterr().err
    assert all(f"SLURM job {job} ended CANCELLED without a result" in err for job in pending)

    kept = cell_files(store)
    lost = {key for job in pending for key in evaluation[job]["cells"]}
    assert 1 <= len(kept) <= 6 - len(lost)
    assert sweep_status(cfg) == 0
    status = capsys.readouterr().out
    assert f"6 cells: {len(kept)} done, 0 running, {6 - len(kept)} failed, 0 missing" in status
    assert status.count("CANCELLED") >= len(pending)

    assert run_sweep(cfg) == 0
    out = capsys.readouterr().out
    assert f"2 models (0 to train), 6 cells ({6 - len(kept)} to compute)" in out
    _, rerun = records(store)
    assert {t["stage"] for t in rerun} == {"eval"}  # nothing trained again
    resubmitted = [key for t in rerun for key in t["cells"]]
    assert len(resubmitted) == len(set(resubmitted)) == 6 - len(kept) and lost <= set(resubmitted)
    after = cell_files(store)
    assert len(after) == 6 and all(after[name] == stamp for name, stamp in kept.items())  # not recomputed
    assert not list((store / "cells").glob(".*"))  # no temporary file left behind


@pytest.mark.slurm
@pytest.mark.slow
def test_a_preempted_training_task_requeues_and_resumes_to_the_uninterrupted_weights(cluster, tmp_path, capsys):
    from interpbench.core import TrainSpec
    from interpbench.engine.train import train_model

    epochs = 5
    cfg = on_slurm(tmp_path, "zoo=fa_cnn", "explainer=random", "data.num_train=1800",
                   f"profile.recipes.fa_minimal.epochs={epochs}")
    store = tmp_path / "store"
    thread, outcome = in_background(cfg)
    wait_until(lambda: list(store.glob("models/fa_cnn-*/last.pt")), what="the first epoch's checkpoint")
    (tasks,) = records(store)
    (train,) = [t for t in tasks if t["stage"] == "train"]
    # What SLURM sends on preemption (submitit's own test helper does the same): SIGTERM, which
    # the job ignores, then the requeue signal, on which it checkpoints and requeues itself.
    subprocess.run(["scancel", "--signal=TERM", train["job_id"]], check=True)
    # scancel returns before slurmd delivers the signal: the requeue signal goes only once the task
    # has logged the TERM, so that a late TERM cannot kill the `scontrol requeue` it starts.
    log = Path(train["stderr"])
    wait_until(lambda: log.exists() and "Bypassing signal SIGTERM" in log.read_text(), seconds=60,
               what="the task's note of the TERM signal")
    subprocess.run(["scancel", "--signal=USR2", train["job_id"]], check=True)
    thread.join(timeout=600)
    assert outcome["status"] == 0

    runs = sacct("--duplicates", "-o", "JobID,State", "-j", train["job_id"].split("_")[0])
    assert [state for _, state in runs] == ["REQUEUED", "COMPLETED"]
    (folder,) = store.glob("models/fa_cnn-*")
    record = json.loads((folder / "record.json").read_text())
    (resumed,) = record["resumed_at_epochs"]
    assert 1 <= resumed < epochs  # the epoch counter went on from the checkpoint
    assert [entry["epoch"] for entry in record["history"]] == list(range(1, epochs + 1))
    log = Path(train["stderr"]).read_text() + Path(train["stderr"]).with_suffix(".out").read_text()
    assert "this job is preempted" in log and f"fa_cnn: resuming after epoch {resumed}" in log

    spec = TrainSpec(**{k: v for k, v in record["spec"].items()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the task (cpus_per_task=1): the same arithmetic
    try:
        train_model(spec, tmp_path / "reference", progress=False)
    finally:
        torch.set_num_threads(threads)
    preempted = torch.load(folder / "model.pt", weights_only=False)["model"]
    uninterrupted = torch.load(spec.folder(tmp_path / "reference") / "model.pt", weights_only=False)["model"]
    assert preempted.keys() == uninterrupted.keys()
    assert all(torch.equal(preempted[name], uninterrupted[name]) for name in preempted)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_failing_model_is_reported_with_its_log_while_the_others_finish(cluster, tmp_path, capsys):
    # resnet18's recipe diverges (loss NaN at the second step); fa_cnn trains normally.
    cfg = on_slurm(tmp_path, "zoo=[fa_cnn,resnet18]", "explainer=random",
                   "profile.recipes.resnet_standard.lr=1e30")
    store = tmp_path / "store"
    assert run_sweep(cfg) == 1
    err = capsys.readouterr().err
    (tasks,) = records(store)
    (failed,) = [t for t in tasks if t["name"] == "train resnet18/seed0"]
    assert f"job train resnet18/seed0 failed (log: {failed['stderr']}):" in err
    assert "FloatingPointError: resnet18: loss became nan at epoch 1" in err
    assert "FloatingPointError" in Path(failed["stderr"]).read_text()
    assert "resnet18 (seed 0) has no trained checkpoint" in err  # its evaluation task stops at once
    assert "1 of 2 cells failed or are missing" in err
    done = cell_files(store)
    assert [name.split("__")[0] for name in done] == ["fa_cnn"]

    assert sweep_status(cfg) == 0
    status = capsys.readouterr().out
    assert "2 cells: 1 done, 0 running, 1 failed, 0 missing" in status
    assert "failed   resnet18/seed0/random/pixel_removal" in status
    assert "training train resnet18/seed0 failed" in status and "loss became nan" in status

    assert run_sweep(cfg) == 1  # a rerun retries the failed model only
    _, rerun = records(store)
    assert sorted(t["name"] for t in rerun) == ["eval resnet18/seed0/random", "train resnet18/seed0"]
    assert cell_files(store) == done


@pytest.mark.slurm
@pytest.mark.slow
def test_sweeps_sharing_cells_submit_each_cell_once(cluster, tmp_path, capsys):
    epochs = "profile.recipes.fa_minimal.epochs=3"  # the second sweep starts while the first trains
    first = on_slurm(tmp_path, "zoo=fa_cnn", "explainer=[native,random]", epochs)
    second = on_slurm(tmp_path, "zoo=fa_cnn", "explainer=[random,gradcam]", epochs)
    store = tmp_path / "store"
    thread, outcome = in_background(first)
    wait_until(lambda: any(t["stage"] == "eval" for run in records(store) for t in run),
               what="the first sweep's submission")
    assert run_sweep(second) == 0  # waits for the first sweep's tasks on the shared cells
    thread.join(timeout=600)
    assert outcome["status"] == 0
    out = capsys.readouterr().out
    assert "task(s) of an earlier submission" in out and "not submitted again" in out
    runs = records(store)
    assert len(runs) == 2
    computed = [key for run in runs for task in run for key in task["cells"]]
    assert len(computed) == len(set(computed)) == 3  # native, random, gradcam: each once
    assert [t["stage"] for t in runs[1]] == ["eval"] and len(runs[1][0]["cells"]) == 1  # gradcam
    assert len(cell_files(store)) == 3
