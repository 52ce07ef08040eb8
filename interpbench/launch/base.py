"""What every launcher shares: the :class:`Launcher` protocol, the work a sweep hands it, a job's
outcome and the tail of an error."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from interpbench.console import EVAL_FACTOR, JobView, LiveConsole
from interpbench.integrity import model_trained

LAUNCHERS = ("debug", "local", "slurm")


@dataclass
class Outcome:
    name: str
    ok: bool
    value: Any = None
    error: str = ""
    log: Optional[str] = None
    cells: List[str] = field(default_factory=list)  # keys of the cells the job was to compute


def last_lines(text: str, count: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def cell_keys(job: Any) -> List[str]:
    """The keys of the cells a job computes (a job without ``cells`` computes none)."""
    return [cell.key() for cell in getattr(job, "cells", None) or []]


@dataclass
class SweepWork:
    """What a sweep still has to do: the plan, the models to run (``todo``, in order), each model's
    missing cells, the store, the sweep's folder and its config (``cfg``: device, progress and the
    launcher's options)."""
    plan: Any  # interpbench.engine.plan.Plan
    todo: List[str]
    missing: Dict[str, List[Any]]
    store: Path
    sweep_dir: Path
    cfg: Any


class Launcher(Protocol):
    """Runs a sweep's work somewhere and returns one :class:`Outcome` per job, or ``None`` when the
    jobs were submitted and not waited for (they run on; ``status`` follows them)."""
    name: str

    def launch(self, work: SweepWork) -> Optional[List[Outcome]]:
        ...


PROGRESS_BAR = re.compile(r"\d+%\|.*\||\d+/\d+ \[\d|it/s\]|s/it\]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*|^[\w.]+Error$")


def clean_lines(text: str) -> List[str]:
    """``text``'s lines without progress bars (tqdm's, which carriage returns leave in logs) and blanks."""
    lines = []
    for line in text.replace("\r", "\n").splitlines():
        if line.strip() and not PROGRESS_BAR.search(line):
            lines.append(line.rstrip())
    return lines


def traceback_summary(text: str, frames: int = 2) -> Optional[str]:
    """The last traceback in ``text``: its exception line first, then its last ``frames`` frames
    (``File ...`` and the source line); None when ``text`` holds no traceback."""
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = clean_lines(text[start:])[1:]
    exception = next((i for i in range(len(lines) - 1, -1, -1)
                      if not lines[i].startswith(" ") and EXCEPTION_LINE.match(lines[i])), None)
    if exception is None:
        return None
    # an exception's message may run over several lines: keep them, up to the next blank-indented part
    message = [lines[exception]]
    for line in lines[exception + 1:]:
        if line.startswith(("-----", "You can check full logs", "  - /")):
            break
        message.append(line)
    frame_lines = [i for i, line in enumerate(lines[:exception]) if line.lstrip().startswith("File ")]
    shown: List[str] = []
    for i in frame_lines[-frames:]:
        end = frame_lines[frame_lines.index(i) + 1] if frame_lines.index(i) + 1 < len(frame_lines) else exception
        shown += [("  " if line.lstrip().startswith("File ") else "    ") + line.strip()
                  for line in lines[i:end] if line.strip() and set(line.strip()) - set("^~ ")]
    return "\n".join(message[:6] + shown)


def failure_cause(error: str, log: Optional[str] = None, timeout_min: Optional[float] = None) -> str:
    """Why a job failed, in a few lines: its exception and the last frames of its traceback (from the
    launcher's error, else from the job's log), or, for a process that was killed before it could
    say (the out-of-memory killer, a time limit, a signal), that it was killed and its log's last line."""
    found = traceback_summary(error)
    text = ""
    if log and Path(log).exists():
        try:
            text = Path(log).read_text(errors="replace")
        except OSError:
            text = ""
    if found is None and text:
        found = traceback_summary(text)
    if found is not None:
        return found
    state = re.search(r"state: ([A-Z_]+)", error)
    last = clean_lines(text or error)
    last = [line for line in last if not line.startswith(("Error stream produced", "-----", "Job ", "has not produced"))]
    if state or "has not produced any output" in error:
        limit = f" launcher.timeout_min={timeout_min:g}," if timeout_min else ""
        return (f"the job's process was killed before it finished (state {state.group(1) if state else '?'}): "
                f"out of memory (the kernel's out-of-memory killer), its time limit ({limit.strip(' ,') or 'none'}) "
                "or a signal; " + (f"its last output: {last[-1].strip()}" if last else "it printed nothing"))
    return "\n".join(last[-6:]) if last else error.strip()


def outcome_line(outcome: Outcome) -> str:
    """One line on a finished job for the console: accuracy and cells, or the first line of its error."""
    if not outcome.ok:
        first = outcome.error.strip().splitlines()
        return (first[0] if first else "failed") + (f" (log: {outcome.log})" if outcome.log else "")
    value = outcome.value if isinstance(outcome.value, dict) else {}
    parts = []
    if value.get("test_accuracy") is not None:
        parts.append(f"test accuracy {float(value['test_accuracy']):.3f}")
    cells = len(outcome.cells)
    failed = len(value.get("errors") or {})
    if cells:
        parts.append(f"{cells - failed}/{cells} cells" + (f", {failed} failed" if failed else ""))
    return ", ".join(parts)


def local_slots(options: Any) -> Tuple[int, int]:
    """The local launcher's ``(jobs at a time, torch threads per job)``: ``launcher.max_parallel`` and
    ``launcher.threads_per_job`` (default: the cores shared out among the parallel jobs)."""
    parallel = int(options.get("max_parallel", 1) or 1)
    threads = options.get("threads_per_job") or max(1, (os.cpu_count() or 1) // parallel)
    return parallel, int(threads)


def train_options(cfg: Any) -> Dict[str, Any]:
    """The sweep's options that a job passes to its training: how often ``last.pt`` is written within
    an epoch (``checkpoint_every_min``; 0: at epoch ends only)."""
    every = cfg.get("checkpoint_every_min")
    return {} if every is None else {"checkpoint_every_s": float(every) * 60.0}


def sweep_console(work: SweepWork, jobs: Sequence[Tuple[str, Any]], parallel: int) -> Any:
    """The console that shows ``jobs`` (name, job) of ``work`` while they run
    (:class:`interpbench.console.LiveConsole`; silent with ``progress=false``)."""
    views = []
    for name, job in jobs:
        key = job.spec.key()
        cells = list(getattr(job, "cells", None) or [])
        train = getattr(job, "train", True) and not model_trained(job.spec, work.store)
        views.append(JobView(
            name, Path(job.status_file), [cell.path(work.store) for cell in cells],
            train_units=3.0 * float(work.plan.cost.get(key, 0.0)) if train else 0.0,
            eval_units=EVAL_FACTOR * float(work.plan.macs.get(key, 0.0)) * sum(cell.num_images for cell in cells)))
    return LiveConsole(views, parallel=parallel, enabled=bool(work.cfg.progress))
