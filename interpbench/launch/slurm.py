"""The sweep on SLURM: its stages (training arrays, then an evaluation array) and the submit-and-wait loop
that never submits a cell twice. The SLURM client itself is :mod:`interpbench.launch.slurm_client`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from interpbench.console import status_file
from interpbench.engine.jobs import ModelJob, TrainJob
from interpbench.engine.plan import Plan
from interpbench.integrity import cell_done, model_trained
from interpbench.launch.base import SweepWork, sweep_console, train_options
from interpbench.launch.slurm_client import (
    LIVE_STATES,
    SLURM_RECORD,
    SlurmStage,
    SlurmTask,
    array_id,
    read_slurm_records,
    slurm_states,
    submit_slurm,
    wait_slurm,
)
from interpbench.plugins import plugin_files
from interpbench.storage import plain


def slurm_stages(plan: Plan, store: Path, cfg: DictConfig, progress_dir: Optional[Path] = None) -> List[Any]:
    """The SLURM job arrays of what is still to do: training, then evaluation.

    Training: one task per model without a checkpoint (models derived from a parent in a second
    array that waits for the first). Evaluation: the missing cells grouped per model and explainer
    (``launcher.group_cells=explainer``, the default: the explainer's maps are computed once and its
    metrics run as one suite that shares forward passes, while explainers run in parallel) or per
    model (``group_cells=model``: fewer, longer tasks). The evaluation array waits for the training
    arrays with an ``afterany`` dependency rather than ``afterok``: one model that fails to train must
    not cancel the cells of the others; its own evaluation tasks stop at once with an error naming
    the failed training task. ``progress_dir``: where each task reports its progress for the console.
    """
    def status(name: str) -> Optional[str]:
        return None if progress_dir is None else str(status_file(progress_dir, name))

    options = plain(cfg.launcher)
    threads = options.get("threads_per_job") or options.get("cpus_per_task") or None
    plugins = plugin_files(cfg.get("plugins"))  # every task loads them before it builds its model
    levels: Dict[int, List[Any]] = {}
    untrained = [key for key, spec in plan.specs.items() if not model_trained(spec, store)]
    for key in sorted(untrained, key=lambda key: -plan.cost[key]):  # longest first
        spec = plan.specs[key]
        name = f"train {spec.model}/seed{spec.seed}"
        levels.setdefault(spec.depth, []).append(SlurmTask(
            name, TrainJob(spec, str(store), device=cfg.device, threads=threads, plugins=plugins,
                           status_file=status(name), name=name, **train_options(cfg)), model=key))
    stages: List[Any] = []
    for depth in sorted(levels):
        stages.append(SlurmStage("train" if depth == 0 else f"train{depth}", levels[depth],
                                 after=[stage.name for stage in stages]))
    evaluation = []
    for key, spec in plan.specs.items():
        groups: Dict[str, List[Any]] = {}
        for cell in plan.cells[key]:
            if not cell_done(cell, store):
                groups.setdefault(cell.explainer if options["group_cells"] == "explainer" else "", []).append(cell)
        for explainer, group in groups.items():
            name = f"eval {spec.model}/seed{spec.seed}" + (f"/{explainer}" if explainer else "")
            evaluation.append(SlurmTask(
                name, ModelJob(spec, group, str(store), device=cfg.device, threads=threads, progress=False,
                               train=False, plugins=plugins, status_file=status(name), name=name,
                               **train_options(cfg)),
                model=key, cells=[cell.key() for cell in group]))
    stages.append(SlurmStage("eval", evaluation, after=[stage.name for stage in stages]))
    return stages


def run_slurm_sweep(plan: Plan, store: Path, sweep_dir: Path, cfg: DictConfig) -> "List[Any] | None":
    """Submit what is missing as SLURM job arrays and wait for it; ``None`` with ``launcher.wait=false``.

    Tasks of an earlier submission that SLURM still runs on these cells or models (the same sweep
    started again, or another sweep sharing cells) are not submitted twice: the sweep waits for
    them first, then submits only what is still missing.
    """
    options = plain(cfg.launcher)
    ours = {cell.key() for cell in plan.all_cells} | set(plan.specs)
    while True:  # until no earlier task runs on these cells (one may be submitting more meanwhile)
        earlier = [entry for entry in read_slurm_records(store)
                   if set(entry["cells"]) & ours or entry["model"] in ours]
        states = slurm_states(entry["job_id"] for entry in earlier)
        live = [entry for entry in earlier
                if states.get(entry["job_id"], "") in LIVE_STATES and not Path(entry["result"]).exists()]
        if not live:
            break
        arrays = ", ".join(sorted({array_id(entry["job_id"]) for entry in live}))
        print(f"{len(live)} task(s) of an earlier submission (job {arrays}) still queued or running on "
              "these cells: not submitted again; waiting for them")
        if not options["wait"]:
            return None
        wait_slurm(live, poll_s=float(options["poll_s"]), progress=bool(cfg.progress))
    stages = slurm_stages(plan, store, cfg, progress_dir=sweep_dir / "progress")
    if not any(stage.tasks for stage in stages):
        return []
    print(f"SLURM logs and submitit files: {sweep_dir / 'slurm'}")
    entries = submit_slurm(stages, sweep_dir / "slurm", options, sweep_dir / SLURM_RECORD)
    if not options["wait"]:
        print("submitted; the same command with --status shows progress, and run again it collects "
              "the results and writes the leaderboard")
        return None
    tasks = [(task.name, task.job) for stage in stages for task in stage.tasks]
    console = sweep_console(SweepWork(plan=plan, todo=[], missing={}, store=store, sweep_dir=sweep_dir, cfg=cfg),
                            tasks, parallel=int(options.get("array_parallelism") or len(tasks) or 1))
    console.start()
    try:
        return wait_slurm(entries, poll_s=float(options["poll_s"]), progress=bool(cfg.progress), console=console)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the tasks go on on SLURM (record {sweep_dir / SLURM_RECORD}); --status "
              "shows them; the same command waits for them and collects the results", file=sys.stderr)
        raise
    finally:
        console.stop()


class SlurmLauncher:
    """The sweep as SLURM job arrays: training, then evaluation after an ``afterany`` dependency
    (:func:`slurm_stages`); ``launcher.wait=false`` submits and returns ``None``."""
    name = "slurm"

    def launch(self, work: SweepWork) -> "List[Any] | None":
        return run_slurm_sweep(work.plan, work.store, work.sweep_dir, work.cfg)
