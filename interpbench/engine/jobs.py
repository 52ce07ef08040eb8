"""The unit of scheduling: one trained model and the cells that evaluate it.

A :class:`ModelJob` trains its model unless the checkpoint exists (resuming from the last epoch
if a previous run stopped part-way), then computes each of its cells that has no result file
yet. The model is loaded once for all of its cells; each cell still gets its own result file.
A cell that raises is reported and the job goes on with the next. Cells that explain the
same images with the same explainer are computed as a suite that shares forward passes.

A job holds a lock on each cell it is about to compute (``<store>/locks/``), so two sweeps that
share cells, running at the same time, never compute or write the same cell twice: the second
waits for the first and then finds the result. With ``launcher=slurm`` the training and the
evaluation are separate tasks (:class:`TrainJob`, then :class:`ModelJob` with ``train=False``).
Both are checkpointable: on SLURM's preemption or time-limit signal submitit requeues the same
job, which resumes from its files (training from the last finished epoch, evaluation at the next
missing cell).

Each job first loads the sweep's plugins (``plugins``: the files' absolute paths; and the entry
points of the group ``interpbench.plugins``), so that models registered outside the package are
known in the process the launcher runs it in (:mod:`interpbench.plugins`).
"""
from __future__ import annotations

import fcntl
import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from interpbench import progress as job_progress
from interpbench.core import Cell, TrainSpec
from interpbench.data import load_dataset
from interpbench.engine.evaluate import run_cells
from interpbench.engine.train import load_trained, train_model
from interpbench.integrity import cell_done, model_trained
from interpbench.plugins import load_plugins
from interpbench.storage import using_store


@contextmanager
def claim_cells(cells: List[Cell], store: str) -> Iterator[List[Cell]]:
    """Lock each cell without a result (in one global order, so that jobs never deadlock), then
    yield those that still have none; the locks are held until the block ends. A corrupt result
    counts as none (it is quarantined)."""
    pending = [cell for cell in cells if not cell_done(cell, Path(store))]
    folder = Path(store) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for cell in sorted(pending, key=lambda cell: cell.path(store).name):
            handle = stack.enter_context(open(folder / (cell.path(store).stem + ".lock"), "a"))
            fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield [cell for cell in pending if not cell_done(cell, Path(store))]


def in_its_store(call: Any) -> Any:
    """Run a job's ``__call__`` with its decoded data kept in its store (``<store>/data``), in the
    process the launcher runs it in, reporting its progress to its ``status_file`` (if any) for the
    sweep's console (:mod:`interpbench.progress`)."""
    @functools.wraps(call)
    def wrapped(self: Any) -> Any:
        status = getattr(self, "status_file", None)
        if status:
            job_progress.bind(Path(status), getattr(self, "name", "") or self.spec.model)
        try:
            with using_store(Path(self.store)):
                return call(self)
        finally:
            if status:
                job_progress.bind(None)
    return wrapped


@dataclass
class ModelJob:
    spec: TrainSpec
    cells: List[Cell]
    store: str
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True
    train: bool = True  # False: the model must be trained already (an evaluation task on SLURM)
    plugins: Tuple[str, ...] = ()  # plugin files (absolute paths) that register models (interpbench.plugins)
    status_file: Optional[str] = None  # where it reports its progress (interpbench.progress), if anywhere
    name: str = ""
    # training's last.pt within an epoch, and the partial maps of a cell (None: the defaults of
    # train_model and run_cells; 0: epoch ends only, no partial maps)
    checkpoint_every_s: Optional[float] = None

    @in_its_store
    def __call__(self) -> Dict[str, Any]:
        import torch

        load_plugins(self.plugins)  # in the launcher's process, before the model is built

        if self.threads:
            torch.set_num_threads(self.threads)
        errors: Dict[str, str] = {}
        if not self.train and not model_trained(self.spec, Path(self.store)):
            raise RuntimeError(
                f"{self.spec.model} (seed {self.spec.seed}) has no trained checkpoint in "
                f"{self.spec.folder(self.store)}: its training task failed or was cancelled (see its log); "
                "rerun the sweep to retry it")
        with claim_cells(self.cells, self.store) as pending:
            every = {} if self.checkpoint_every_s is None else {"checkpoint_every_s": self.checkpoint_every_s}
            if not pending:
                record = train_model(self.spec, self.store, device=self.device, progress=self.progress, **every)
            else:
                dataset = load_dataset(self.spec.data)
                model, record = load_trained(self.spec, self.store, dataset, device=self.device,
                                             progress=self.progress, **every)
                partial = {} if self.checkpoint_every_s is None else {
                    "checkpoint_seconds": self.checkpoint_every_s if self.checkpoint_every_s > 0 else float("inf")}
                _, errors = run_cells(pending, self.store, device=self.device, progress=self.progress,
                                      model=model, record=record, dataset=dataset, **partial)
        return {"model": self.spec.model, "test_accuracy": record["test_accuracy"],
                "train_seconds": record.get("train_seconds"), "errors": errors}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or timeout submitit requeues the same job; it resumes from its files."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@dataclass
class TrainJob:
    """Train one model (or find its checkpoint); a SLURM training task."""
    spec: TrainSpec
    store: str
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = False
    plugins: Tuple[str, ...] = ()  # plugin files (absolute paths) that register models (interpbench.plugins)
    status_file: Optional[str] = None  # where it reports its progress (interpbench.progress), if anywhere
    name: str = ""
    checkpoint_every_s: Optional[float] = None  # training's last.pt within an epoch (None: train_model's default)

    @in_its_store
    def __call__(self) -> Dict[str, Any]:
        import torch

        load_plugins(self.plugins)  # in the launcher's process, before the model is built
        if self.threads:
            torch.set_num_threads(self.threads)
        every = {} if self.checkpoint_every_s is None else {"checkpoint_every_s": self.checkpoint_every_s}
        record = train_model(self.spec, self.store, device=self.device, progress=self.progress, **every)
        return {"model": self.spec.model, "test_accuracy": record["test_accuracy"],
                "train_seconds": record.get("train_seconds"), "errors": {},
                "resumed_at_epochs": record.get("resumed_at_epochs", [])}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeued on preemption or timeout; training resumes from the last finished epoch."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)
