"""The ``debug`` launcher (every job in this process, in turn) and the ``local`` one (a process per
job through submitit's ``LocalExecutor``, at most ``max_parallel`` at a time)."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from interpbench.console import LiveConsole, status_file
from interpbench.engine.jobs import ModelJob
from interpbench.launch.base import (
    Outcome,
    SweepWork,
    cell_keys,
    failure_cause,
    last_lines,
    local_slots,
    outcome_line,
    sweep_console,
    train_options,
)
from interpbench.plugins import plugin_files


def run_debug(jobs: Sequence[Tuple[str, Callable[[], Any]]], progress: bool = True,
              console: Optional[LiveConsole] = None) -> List[Outcome]:
    """Every job in this process, in turn; ``console`` shows them (else a bar over jobs)."""
    from tqdm import tqdm

    outcomes = []
    for name, job in tqdm(jobs, desc="jobs", disable=not progress or console is not None):
        if console is not None:
            console.job_started(name)
        try:
            outcomes.append(Outcome(name, True, job(), cells=cell_keys(job)))
        except Exception:  # a failing job is reported, the others go on
            outcomes.append(Outcome(name, False, error=last_lines(traceback.format_exc()), cells=cell_keys(job)))
        if console is not None:
            console.job_finished(name, outcomes[-1].ok, outcome_line(outcomes[-1]))
    return outcomes


def run_local(
    jobs: Sequence[Tuple[str, Callable[[], Any]]],
    folder: Path,
    max_parallel: int = 2,
    timeout_min: float = 120.0,
    progress: bool = True,
    poll_seconds: float = 0.5,
    console: Optional[LiveConsole] = None,
) -> List[Outcome]:
    """Run each job as a process (submitit ``LocalExecutor``), ``max_parallel`` at a time;
    ``console`` shows them (else a bar over jobs). A failed job's error is its exception and the
    last lines of its traceback, read from its log (:func:`failure_cause`)."""
    import submitit
    from tqdm import tqdm

    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=timeout_min)
    pending = list(jobs)
    running: List[Tuple[str, Any, List[str]]] = []
    outcomes: List[Outcome] = []
    bar = tqdm(total=len(jobs), desc="jobs", disable=not progress or console is not None)
    while pending or running:
        while pending and len(running) < max_parallel:
            name, job = pending.pop(0)
            running.append((name, executor.submit(job), cell_keys(job)))
            if console is not None:
                console.job_started(name)
        for entry in list(running):
            name, submitted, cells = entry
            if not submitted.done():
                continue
            running.remove(entry)
            log = str(submitted.paths.stderr)
            try:
                outcomes.append(Outcome(name, True, submitted.result(), log=log, cells=cells))
            except Exception as error:  # submitit raises with the job's traceback
                outcomes.append(Outcome(name, False, error=failure_cause(str(error), log, timeout_min),
                                        log=log, cells=cells))
            bar.update(1)
            bar.set_postfix(failed=sum(not o.ok for o in outcomes))
            if console is not None:
                console.job_finished(name, outcomes[-1].ok, outcome_line(outcomes[-1]))
        if running:
            time.sleep(poll_seconds)
    bar.close()
    return outcomes


def model_jobs(work: SweepWork, threads: Optional[int], progress: Optional[bool] = None) -> List[Tuple[str, ModelJob]]:
    """One job per model still to do: train it if needed, then compute its missing cells (the job
    loads the sweep's plugins first, and reports its progress under ``<sweep>/progress/``).
    ``progress``: the jobs' own progress bars (default: the sweep's ``progress``)."""
    cfg = work.cfg
    plugins = plugin_files(cfg.get("plugins"))
    bars = bool(cfg.progress) if progress is None else progress
    jobs = []
    for key in work.todo:
        spec = work.plan.specs[key]
        name = f"{spec.model}/seed{spec.seed}"
        jobs.append((name, ModelJob(spec, work.missing[key], str(work.store), device=cfg.device, threads=threads,
                                    progress=bars, plugins=plugins, name=name,
                                    status_file=str(status_file(work.sweep_dir / "progress", name)),
                                    **train_options(cfg))))
    return jobs


class DebugLauncher:
    """Every job in this process, one after another (for stepping through with a debugger)."""
    name = "debug"

    def launch(self, work: SweepWork) -> List[Outcome]:
        console = sweep_console(work, model_jobs(work, threads=None), parallel=1)
        jobs = model_jobs(work, threads=None, progress=bool(work.cfg.progress) and not console.enabled)
        console.start()
        try:
            return run_debug(jobs, progress=bool(work.cfg.progress), console=console)
        finally:
            console.stop()


class LocalLauncher:
    """Each model's job in its own process, ``launcher.max_parallel`` at a time, each with
    ``launcher.threads_per_job`` torch threads (default: the cores shared out)."""
    name = "local"

    def launch(self, work: SweepWork) -> List[Outcome]:
        options = work.cfg.launcher
        parallel, threads = local_slots(options)
        jobs = model_jobs(work, threads=threads)
        console = sweep_console(work, jobs, parallel=parallel).start()
        try:
            return run_local(jobs, work.sweep_dir / "jobs", max_parallel=parallel,
                             timeout_min=float(options.timeout_min), progress=bool(work.cfg.progress),
                             console=console)
        finally:
            console.stop()
