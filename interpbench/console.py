"""The sweep's console while it waits: one line per running job, an overall bar over cells with an
ETA, then (after the sweep) the leaderboard's top rows, the warnings and the report's path.

Jobs report where they stand through :mod:`interpbench.progress` (a small JSON file per job under
``<sweep>/progress/``); :class:`LiveConsole` reads those files and the cells' result files about
once a second. On a terminal it redraws a block at the bottom of the screen::

    fa_cnn/seed0       train epoch 3/10 step 120/313  loss 1.234  acc 0.456   1:02
    resnet18/seed0     explain gradcam  images 250/500  cell 1/3                0:41
    cells 12/36 [######............] 33%  jobs 4/12 done  elapsed 3:10  ETA 6:25

When stdout is not a terminal (a CI log, a file) it prints plain lines instead, only when something
changes: a job starts, finishes, moves to another stage, or (while training) at most every
``PLAIN_EPOCH_S`` seconds at an epoch's end; plus the overall line every ``PLAIN_OVERALL_S`` seconds.

The ETA adds, over the jobs not finished, the work left times a measured rate. A job's work is its
training (multiply-adds x training images x epochs, x3 for the backward pass) plus its cells
(multiply-adds x images x ``EVAL_FACTOR`` per cell); the rate (seconds per unit of work) is the
job's own once it is 5 % in, else the rate measured over every job so far; the total is divided
by the number of jobs that run at once. Before any job has reported, there is no ETA.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from interpbench import progress as job_progress

PLAIN_EPOCH_S = 30.0
PLAIN_OVERALL_S = 60.0
POLL_S = 1.0  # how often the console reads the jobs' progress files
EVAL_FACTOR = 12.0  # forward passes per image and cell (map + scoring), against training's 3 per epoch


def clock(seconds: Optional[float]) -> str:
    """``m:ss`` or ``h:mm:ss`` (``d d h h`` from two days on); ``--:--`` for an unknown time."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    if seconds >= 48 * 3600:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_file(folder: Path, name: str) -> Path:
    """Where job ``name`` reports its progress (one file per job under ``folder``)."""
    return Path(folder) / ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".json")


def describe(status: Optional[Dict[str, Any]]) -> str:
    """One job's stage in words, from its last progress report."""
    if not status:
        return "starting"
    stage = status.get("stage")
    if stage == "train":
        text = f"train epoch {status.get('epoch', '?')}/{status.get('epochs', '?')}"
        if status.get("steps"):
            text += f" step {status.get('step', 0)}/{status['steps']}"
        if status.get("loss") is not None:
            text += f"  loss {float(status['loss']):.3f}"
        if status.get("accuracy") is not None:
            text += f"  acc {float(status['accuracy']):.3f}"
        return text
    if stage == "trained":
        accuracy = status.get("test_accuracy")
        return "trained" + (f", test accuracy {float(accuracy):.3f}" if accuracy is not None else "")
    if stage == "fit":
        return "fit " + str(status.get("what", "on its parent"))
    if stage == "load":
        return "load checkpoint"
    cell = ""
    if status.get("cells"):
        cell = f"  cell {min(int(status.get('cells_done', 0)) + 1, int(status['cells']))}/{status['cells']}"
    if stage == "explain":
        images = ""
        if status.get("images"):
            images = f"  images {status.get('images_done', 0)}/{status['images']}"
        return f"explain {status.get('explainer', '')}{images}{cell}"
    if stage == "metric":
        return f"score {status.get('metric', '')}{cell}"
    return str(stage)


@dataclass
class JobView:
    """What the console knows of one job: its cells' result files, its work (for the ETA) and state."""
    name: str
    status_path: Path
    cell_paths: List[Path] = field(default_factory=list)
    train_units: float = 0.0
    eval_units: float = 0.0
    state: str = "queued"  # queued | running | done | failed
    started: Optional[float] = None
    ended: Optional[float] = None
    status: Optional[Dict[str, Any]] = None
    shown: str = ""  # the plain line last printed for it
    shown_at: float = 0.0

    @property
    def units(self) -> float:
        return self.train_units + self.eval_units

    def cells_done(self) -> int:
        return sum(path.exists() for path in self.cell_paths)

    def fraction(self) -> float:
        """How much of its work is done, from its last report and its cells' files."""
        if self.state in ("done", "failed"):
            return 1.0
        if self.units <= 0:
            return 0.0
        status = self.status or {}
        trained = self.train_units
        if status.get("stage") == "train" and status.get("epochs"):
            epochs = float(status["epochs"])
            within = float(status.get("step", 0)) / float(status["steps"]) if status.get("steps") else 0.0
            trained = self.train_units * min(1.0, (float(status.get("epoch", 1)) - 1 + within) / epochs)
        elif status.get("stage") in (None, "fit"):
            trained = 0.0
        done_cells = self.cells_done()
        evaluated = self.eval_units * done_cells / len(self.cell_paths) if self.cell_paths else 0.0
        return min(1.0, (trained + evaluated) / self.units)


class LiveConsole:
    """Shows the jobs of a sweep while a launcher runs them (see the module's docstring).

    The launcher calls :meth:`start`, then :meth:`job_started` / :meth:`job_finished` as jobs begin
    and end, and :meth:`stop`. Rendering happens on a background thread, so it goes on while the
    debug launcher runs a job in this very process."""

    def __init__(self, jobs: Sequence[JobView], parallel: int = 1, stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, enabled: bool = True, interval: Optional[float] = None) -> None:
        self.jobs: Dict[str, JobView] = {job.name: job for job in jobs}
        self.parallel = max(1, int(parallel))
        self.stream = stream or sys.stdout
        self.tty = bool(tty if tty is not None else (hasattr(self.stream, "isatty") and self.stream.isatty()
                                                      and os.environ.get("TERM") != "dumb"))
        self.enabled = enabled
        self.interval = POLL_S if interval is None else interval
        self.began = time.time()
        self.lock = threading.RLock()
        self.block = 0  # lines of the live block drawn last (terminal mode)
        self.overall_at = time.time()
        self.thread: Optional[threading.Thread] = None
        self.halt = threading.Event()

    # --- what the launcher calls -------------------------------------------------------------------
    def start(self) -> "LiveConsole":
        if self.enabled:
            self.print(f"jobs: {len(self.jobs)} ({self.parallel} at a time); cells to compute: "
                       f"{sum(len(job.cell_paths) for job in self.jobs.values())}")
            self.thread = threading.Thread(target=self._loop, name="interpbench-console", daemon=True)
            self.thread.start()
        return self

    def job_started(self, name: str) -> None:
        with self.lock:
            job = self.jobs.get(name)
            if job is not None and job.state == "queued":
                job.state, job.started = "running", time.time()

    def job_finished(self, name: str, ok: bool, line: str = "") -> None:
        with self.lock:
            job = self.jobs.get(name)
            if job is not None:
                job.state, job.ended = ("done" if ok else "failed"), time.time()
                if job.started is None:
                    job.started = job.ended
            took = clock(job.ended - job.started) if job is not None and job.started else ""
            self.print(f"{'done  ' if ok else 'FAILED'} {name}" + (f": {line}" if line else "")
                       + (f" ({took})" if took else ""))

    def print(self, text: str) -> None:
        """A line that stays (above the live block on a terminal)."""
        if not self.enabled:
            return
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def stop(self) -> None:
        self.halt.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if not self.enabled:
            return
        with self.lock:
            self._refresh()
            self._erase()
            self.stream.write(self.overall() + "\n")
            self.stream.flush()

    # --- reading and drawing -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                with self.lock:
                    self._refresh()
                    if self.tty:
                        self._erase()
                        self._draw()
                    else:
                        self._plain()
                    self.stream.flush()
            except Exception:  # the console must never take a sweep down
                pass

    def _refresh(self) -> None:
        for job in self.jobs.values():
            if job.state in ("queued", "running"):
                status = job_progress.read(job.status_path)
                if status is not None and status.get("time", 0) >= self.began - 1:
                    job.status = status
                    if job.state == "queued":  # a SLURM task: running from its first report on
                        job.state, job.started = "running", float(status.get("time", time.time()))

    def cells(self) -> tuple:
        done = sum(job.cells_done() if job.state != "done" else len(job.cell_paths) for job in self.jobs.values())
        return done, sum(len(job.cell_paths) for job in self.jobs.values())

    def eta(self) -> Optional[float]:
        """Seconds left (see the module's docstring), or None before anything was measured."""
        now = time.time()
        spent, done_units = 0.0, 0.0
        for job in self.jobs.values():
            if job.started is not None:
                spent += (job.ended or now) - job.started
                done_units += job.fraction() * job.units
        if done_units <= 0 or spent <= 0:
            return None
        rate = spent / done_units
        left = 0.0
        for job in self.jobs.values():
            if job.state in ("done", "failed"):
                continue
            fraction = job.fraction()
            if job.started is not None and fraction >= 0.05:
                left += (now - job.started) * (1 - fraction) / fraction
            else:
                left += (1 - fraction) * job.units * rate
        return left / min(self.parallel, max(1, sum(j.state in ("queued", "running") for j in self.jobs.values())))

    def overall(self, width: int = 20) -> str:
        done, total = self.cells()
        share = done / total if total else 1.0
        filled = int(round(share * width))
        finished = sum(job.state in ("done", "failed") for job in self.jobs.values())
        return (f"cells {done}/{total} [{'#' * filled}{'.' * (width - filled)}] {share:4.0%}  "
                f"jobs {finished}/{len(self.jobs)} done  elapsed {clock(time.time() - self.began)}  "
                f"ETA {clock(self.eta()) if finished < len(self.jobs) else '0:00'}")

    def job_line(self, job: JobView, width: int) -> str:
        took = clock(time.time() - job.started) if job.started else ""
        return f"{job.name:<{width}}  {describe(job.status)}  {took}"

    def running(self) -> List[JobView]:
        return [job for job in self.jobs.values() if job.state == "running"]

    def _draw(self) -> None:
        if not self.tty or self.thread is None or self.halt.is_set():
            return
        running = self.running()
        width = max([len(job.name) for job in running] + [8])
        columns = _columns()
        lines = [self.job_line(job, width)[:columns - 1] for job in running] + [self.overall()[:columns - 1]]
        self.stream.write("\n".join(lines) + "\n")
        self.block = len(lines)

    def _erase(self) -> None:
        if self.tty and self.block:
            self.stream.write("\x1b[1A\x1b[2K" * self.block)
            self.block = 0

    def _plain(self) -> None:
        now = time.time()
        for job in self.running():
            text = describe(job.status)
            stage = (job.status or {}).get("stage")
            if stage == "train":  # one line per epoch at most, and not more often than PLAIN_EPOCH_S
                key = f"train {(job.status or {}).get('epoch')}"
                if key == job.shown or (job.shown.startswith("train") and now - job.shown_at < PLAIN_EPOCH_S):
                    continue
            else:
                key = f"{stage} {(job.status or {}).get('explainer', '')} {(job.status or {}).get('metric', '')}"
                if key == job.shown:
                    continue
            job.shown, job.shown_at = key, now
            self.stream.write(f"       {job.name}: {text}\n")
        if now - self.overall_at >= PLAIN_OVERALL_S:
            self.overall_at = now
            self.stream.write(self.overall() + "\n")


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120
