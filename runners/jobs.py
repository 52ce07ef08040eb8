"""The unit of scheduling: one trained model and the cells that evaluate it.

A :class:`ModelJob` trains its model unless the checkpoint exists (resuming from the last epoch
if a previous run stopped part-way), then computes each of its cells that has no result file
yet. The model is loaded once for all of its cells; each cell still gets its own result file.
A cell that raises is reported and the job goes on with the next. Cells that explain the
same images with the same explainer are computed as a suite that shares forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from runners.evaluate import Cell, run_cells
from runners.train import TrainSpec, load_trained, train_model


@dataclass
class ModelJob:
    spec: TrainSpec
    cells: List[Cell]
    store: str
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True

    def __call__(self) -> Dict[str, Any]:
        import torch

        from data import load_dataset

        if self.threads:
            torch.set_num_threads(self.threads)
        errors: Dict[str, str] = {}
        pending = [cell for cell in self.cells if not cell.path(self.store).exists()]
        if not pending:
            record = train_model(self.spec, self.store, device=self.device, progress=self.progress)
        else:
            dataset = load_dataset(self.spec.data)
            model, record = load_trained(self.spec, self.store, dataset, device=self.device,
                                         progress=self.progress)
            _, errors = run_cells(pending, self.store, device=self.device, progress=self.progress,
                                  model=model, record=record, dataset=dataset)
        return {"model": self.spec.model, "test_accuracy": record["test_accuracy"],
                "train_seconds": record.get("train_seconds"), "errors": errors}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or timeout submitit requeues the same job; it resumes from its files."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)
