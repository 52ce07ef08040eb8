"""Launchers run a list of jobs and report each one's outcome.

- ``debug``: in this process, one after another (for stepping through with a debugger).
- ``local``: each job in its own process through submitit's ``LocalExecutor``, at most
  ``max_parallel`` at a time, logs under the sweep folder.
- ``slurm``: stages of jobs, each stage one SLURM job array submitted through submitit's
  ``SlurmExecutor``; a stage may wait for earlier ones (an ``afterany`` dependency). Every task is
  recorded (job id, name, cells, log paths) in ``slurm.json`` so that ``--status`` and a rerun can
  ask SLURM about it later, from another process.

A job is a picklable callable. A failure never stops the other jobs: it is reported with its log
path and the last lines of its error.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from interpbench.launch.base import Outcome, failure_cause, last_lines, outcome_line
from interpbench.storage import atomic_write_json, read_json

# Options of ``launcher=slurm`` (interpbench/conf/launcher/slurm.yaml).
SLURM_OPTIONS = (
    "name", "partition", "account", "qos", "time_min", "gpus_per_node", "cpus_per_task", "mem_gb",
    "array_parallelism", "signal_delay_s", "max_requeues", "setup", "extra_sbatch", "group_cells",
    "threads_per_job", "wait", "poll_s",
)


GROUP_CELLS = ("explainer", "model")


# States in which SLURM may still run a task (submitit's list of unfinished states, and the
# transitional ones around a requeue); any other state is final.
LIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
    "COMPLETING", "CONFIGURING", "PREEMPTED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD",
    "SPECIAL_EXIT", "READY", "UNKNOWN",
}


SLURM_RECORD = "slurm.json"


@dataclass
class SlurmTask:
    """One task of a job array: its job, the model it trains or evaluates, the cells it computes."""
    name: str
    job: Callable[[], Any]
    model: str = ""
    cells: List[str] = field(default_factory=list)


@dataclass
class SlurmStage:
    """One job array. ``after``: names of earlier stages it waits for (``afterany``)."""
    name: str
    tasks: List[SlurmTask]
    after: List[str] = field(default_factory=list)


def check_slurm() -> Optional[str]:
    """``None`` when SLURM's commands are on this machine, else a one-line error. The options'
    values are checked with the rest of the config (:func:`interpbench.config.validate`)."""
    missing = [command for command in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(command) is None]
    if missing:
        return (f"launcher=slurm: {', '.join(missing)} not found on this machine; run the sweep where "
                "SLURM's commands are (a login node), or use launcher=local; "
                "runners/slurm/local_cluster.sh start makes a one-machine cluster")
    return None


def slurm_executor(folder: Path, options: Dict[str, Any], stage: str, dependency: Optional[str] = None) -> Any:
    """A submitit ``SlurmExecutor`` for one stage's job array with ``launcher=slurm``'s options."""
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=int(options["max_requeues"]))
    extra = {str(key): value for key, value in (options.get("extra_sbatch") or {}).items()}
    parameters: Dict[str, Any] = {
        "job_name": f"interpbench-{stage}",
        "time": int(options["time_min"]),
        "signal_delay_s": int(options["signal_delay_s"]),
        "array_parallelism": int(options["array_parallelism"]),
        "setup": [str(line) for line in options.get("setup") or []],
        # Requeueable even where the cluster's default (JobRequeue) says otherwise.
        "additional_parameters": {"requeue": True, **extra},
    }
    for key in ("partition", "account", "qos", "cpus_per_task", "gpus_per_node"):
        if options.get(key):
            parameters[key] = options[key]
    if options.get("mem_gb"):
        parameters["mem"] = f"{int(float(options['mem_gb']) * 1024)}MB"
    if dependency:
        parameters["dependency"] = dependency
    executor.update_parameters(**parameters)
    return executor


def array_id(job_id: str) -> str:
    """``"123"`` for a task ``"123_4"`` (or a plain job ``"123"``)."""
    return str(job_id).split("_")[0]


def submit_slurm(stages: Sequence[SlurmStage], folder: Path, options: Dict[str, Any],
                 record: Path) -> List[Dict[str, Any]]:
    """Submit each stage as one job array; a stage depends (``afterany``) on the arrays of the
    stages it names. Each task is added to ``record`` as soon as its array is submitted; returns
    the records of the tasks submitted (job id, name, model, cells, log and result paths)."""
    arrays: Dict[str, str] = {}  # stage name -> array job id
    entries = read_json(record)["tasks"] if record.exists() else []
    first = len(entries)
    for stage in stages:
        if not stage.tasks:
            continue
        waits = [arrays[name] for name in stage.after if name in arrays]
        dependency = "afterany:" + ":".join(waits) if waits else None
        executor = slurm_executor(folder, options, stage.name, dependency)
        jobs = executor.submit_array([task.job for task in stage.tasks])
        arrays[stage.name] = array_id(jobs[0].job_id)
        for task, job in zip(stage.tasks, jobs):
            entries.append({
                "job_id": job.job_id, "stage": stage.name, "name": task.name, "model": task.model,
                "cells": task.cells, "after": dependency, "folder": str(folder),
                "stderr": str(job.paths.stderr), "result": str(job.paths.result_pickle),
                "submitted": time.time(),
            })
        atomic_write_json(record, {"tasks": entries})
        print(f"submitted {stage.name}: job array {arrays[stage.name]} with {len(jobs)} task(s)"
              + (f", after {dependency}" if dependency else ""))
    return entries[first:]


def parse_job_ids(text: str) -> Dict[str, str]:
    """``{task id: state}`` from ``JobID|State`` lines; array ranges such as ``12_[3-5%2]`` expanded."""
    from submitit.slurm.slurm import read_job_id

    states: Dict[str, str] = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if not job or "." in job or not state or job == "JobID":
            continue
        state = state.split()[0].rstrip("+")  # "CANCELLED by 0" -> "CANCELLED"
        try:
            parts = read_job_id(job)
        except ValueError:
            continue
        for part in parts:
            if len(part) == 3:
                for index in range(int(part[1]), int(part[2]) + 1):
                    states[f"{part[0]}_{index}"] = state
            else:
                states["_".join(part[:2])] = state
    return states


def _query(command: List[str]) -> Optional[str]:
    """The standard output of a SLURM command, or ``None`` when it fails."""
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if answer.returncode and "Invalid job id" in answer.stderr:  # squeue: none of them is queued
        return ""
    return answer.stdout if answer.returncode == 0 else None


def slurm_states(job_ids: Iterable[str]) -> Dict[str, str]:
    """The SLURM state of each task (``"123_4"``).

    squeue says which tasks SLURM may still run (and is right the moment a job is submitted or
    ends); sacct names the final state of the others (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...).
    A finished task that sacct does not know (no accounting) gets ``""``; when squeue cannot be
    asked, a task sacct does not know either is ``"UNKNOWN"`` (counted as live).
    """
    wanted = set(job_ids)
    arrays = ",".join(sorted({array_id(job) for job in wanted}))
    if not wanted:
        return {}
    queued_text = _query(["squeue", "--noheader", "--array", "--states=all", "-o", "%i|%T", "-j", arrays])
    queued = parse_job_ids(queued_text or "")
    states = {job: queued[job] for job in wanted if job in queued and queued[job] in LIVE_STATES}
    others = wanted - set(states)
    if others:
        accounted = parse_job_ids(_query(["sacct", "--parsable2", "--noheader", "-X", "-o", "JobID,State",
                                          "-j", arrays]) or "")
        for job in others:
            if job in accounted and accounted[job] not in LIVE_STATES:
                states[job] = accounted[job]
            elif job in queued:  # squeue still remembers a finished job for a while
                states[job] = queued[job]
            elif queued_text is None:
                states[job] = accounted.get(job, "UNKNOWN")
            else:  # gone from the queue; sacct lags or there is no accounting
                states[job] = accounted.get(job, "") if accounted.get(job, "") not in LIVE_STATES else ""
    return states


def task_outcome(entry: Dict[str, Any], state: str, patience_s: float = 10.0) -> Outcome:
    """A finished task's outcome from its result pickle, or from its SLURM state and its log."""
    from submitit.core.utils import pickle_load

    result, log = Path(entry["result"]), entry["stderr"]
    deadline = time.time() + (patience_s if state == "COMPLETED" else 0.0)
    while not result.exists() and time.time() < deadline:  # a shared file system may lag
        time.sleep(0.5)
    if result.exists():
        try:
            kind, value = pickle_load(result)
        except Exception as error:  # an unreadable result counts as a failure
            kind, value = "error", f"unreadable result {result}: {error}"
        if kind == "success":
            return Outcome(entry["name"], True, value, log=log, cells=entry["cells"])
        return Outcome(entry["name"], False, error=failure_cause(str(value), log), log=log, cells=entry["cells"])
    tail = ""
    if Path(log).exists():
        text = Path(log).read_text(errors="replace")
        tail = failure_cause("", log) if "Traceback" in text else last_lines(text)
    message = f"SLURM job {entry['job_id']} ended {state or 'in an unknown state'} without a result"
    return Outcome(entry["name"], False, error=message + (":\n" + tail if tail else ""), log=log,
                   cells=entry["cells"])


def wait_slurm(entries: Sequence[Dict[str, Any]], poll_s: float = 5.0, progress: bool = True,
               console: Any = None) -> List[Outcome]:
    """Wait until SLURM has finished every task in ``entries`` (records written by ``submit_slurm``);
    one ``sacct`` call per poll for all of them. Returns their outcomes in finishing order.
    ``console`` (:class:`interpbench.console.LiveConsole`) shows the tasks from their progress files
    meanwhile; without it, a bar over tasks."""
    from tqdm import tqdm

    pending = list(entries)
    outcomes: List[Outcome] = []
    bar = tqdm(total=len(pending), desc="slurm tasks", disable=not progress or console is not None)
    while pending:
        states = slurm_states(entry["job_id"] for entry in pending)
        for entry in list(pending):
            state = states.get(entry["job_id"], "")
            finished = Path(entry["result"]).exists() or (state and state not in LIVE_STATES)
            if not finished:
                continue
            pending.remove(entry)
            outcomes.append(task_outcome(entry, state))
            if console is not None:
                console.job_finished(entry["name"], outcomes[-1].ok, outcome_line(outcomes[-1]))
            bar.update(1)
            bar.set_postfix(failed=sum(not o.ok for o in outcomes))
        if pending:
            time.sleep(poll_s)
    bar.close()
    return outcomes


def read_slurm_records(store: Path) -> List[Dict[str, Any]]:
    """Every task recorded under ``<store>/sweeps/*/slurm.json``, oldest submission first."""
    entries: List[Dict[str, Any]] = []
    for record in sorted(Path(store).glob(f"sweeps/*/{SLURM_RECORD}")):
        try:
            tasks = read_json(record)["tasks"]
        except (OSError, ValueError, KeyError):
            continue
        for entry in tasks:
            entries.append({**entry, "sweep": str(record.parent)})
    return sorted(entries, key=lambda entry: entry.get("submitted", 0.0))
