"""What every launcher shares: the :class:`Launcher` protocol, the work a sweep hands it, a job's
outcome and the tail of an error."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

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
