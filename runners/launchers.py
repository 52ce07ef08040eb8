"""Launchers run a list of jobs and report each one's outcome.

- ``debug``: in this process, one after another (for stepping through with a debugger).
- ``local``: each job in its own process through submitit's ``LocalExecutor``, at most
  ``max_parallel`` at a time, logs under the sweep folder.

A job is a picklable callable. A failure never stops the other jobs: it is reported with its log
path and the last lines of its error.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

LAUNCHERS = ("debug", "local")


@dataclass
class Outcome:
    name: str
    ok: bool
    value: Any = None
    error: str = ""
    log: Optional[str] = None


def last_lines(text: str, count: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def run_debug(jobs: Sequence[Tuple[str, Callable[[], Any]]], progress: bool = True) -> List[Outcome]:
    from tqdm import tqdm

    outcomes = []
    for name, job in tqdm(jobs, desc="jobs", disable=not progress):
        try:
            outcomes.append(Outcome(name, True, job()))
        except Exception:  # a failing job is reported, the others go on
            outcomes.append(Outcome(name, False, error=last_lines(traceback.format_exc())))
    return outcomes


def run_local(
    jobs: Sequence[Tuple[str, Callable[[], Any]]],
    folder: Path,
    max_parallel: int = 2,
    timeout_min: float = 120.0,
    progress: bool = True,
    poll_seconds: float = 0.5,
) -> List[Outcome]:
    """Run each job as a process (submitit ``LocalExecutor``), ``max_parallel`` at a time."""
    import submitit
    from tqdm import tqdm

    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=timeout_min)
    pending = list(jobs)
    running: List[Tuple[str, Any]] = []
    outcomes: List[Outcome] = []
    bar = tqdm(total=len(jobs), desc="jobs", disable=not progress)
    while pending or running:
        while pending and len(running) < max_parallel:
            name, job = pending.pop(0)
            running.append((name, executor.submit(job)))
        for entry in list(running):
            name, submitted = entry
            if not submitted.done():
                continue
            running.remove(entry)
            log = str(submitted.paths.stderr)
            try:
                outcomes.append(Outcome(name, True, submitted.result(), log=log))
            except Exception as error:  # submitit raises with the job's traceback
                outcomes.append(Outcome(name, False, error=last_lines(str(error)), log=log))
            bar.update(1)
            bar.set_postfix(failed=sum(not o.ok for o in outcomes))
        if running:
            time.sleep(poll_seconds)
    bar.close()
    return outcomes
