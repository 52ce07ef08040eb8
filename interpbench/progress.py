"""Where a running job stands, for the sweep's console.

A job process calls :func:`bind` with a status file (``<sweep>/progress/<job>.json``) once, then
:func:`report` whenever its stage moves on: ``train`` (epoch, epochs, step, steps, loss,
accuracy), ``fit`` (a k-means head or another fitted part), ``load``, ``explain`` and ``metric``
(the cell, and how many of the job's cells are done). Each report replaces the file atomically;
reports within ``MIN_INTERVAL_S`` of the last one are dropped unless the stage changed or
``force`` is set, so a training loop can report every step at no cost. Without :func:`bind` (a
job run outside a sweep, the tests) :func:`report` does nothing.

The sweep's console (:mod:`interpbench.console`) reads these files while it waits, for the local
launcher and for SLURM tasks alike (the store is shared with the cluster's nodes).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

MIN_INTERVAL_S = 0.5

_state: Dict[str, Any] = {"path": None, "job": "", "last": 0.0, "stage": None, "fields": {}}


def bind(path: Optional[Path], job: str = "") -> None:
    """Send this process's reports to ``path`` (None: stop reporting)."""
    _state.update(path=None if path is None else Path(path), job=job, last=0.0, stage=None, fields={})
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def bound() -> bool:
    return _state["path"] is not None


def report(stage: str, force: bool = False, **fields: Any) -> None:
    """Record that the job is at ``stage`` with ``fields`` (numbers and short strings)."""
    path = _state["path"]
    if path is None:
        return
    now = time.time()
    if not force and stage == _state["stage"] and now - _state["last"] < MIN_INTERVAL_S:
        return
    if stage != _state["stage"]:
        _state["fields"] = {}
    _state["fields"].update(fields)
    _state.update(stage=stage, last=now)
    record = {"job": _state["job"], "stage": stage, "time": now, "pid": os.getpid(), **_state["fields"]}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, default=str))
        os.replace(temporary, path)
    except OSError:  # a progress line is never worth failing a job for
        pass


def read(path: Path) -> Optional[Dict[str, Any]]:
    """The last report in ``path``, or None when there is none (yet) or it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
