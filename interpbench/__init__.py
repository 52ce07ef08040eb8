"""interpbench: a benchmark harness for intrinsically interpretable image classifiers.

The public names below are imported on first use (``interpbench.wrap`` imports the zoo only when
it is asked for), so that ``import interpbench.zoo`` and the other subpackages load nothing
they do not need and no import cycle runs through this file.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "TrainSpec": "interpbench.core",
    "Cell": "interpbench.core",
    "CellResult": "interpbench.core",
    "create_model": "interpbench.zoo",
    "MODELS": "interpbench.zoo",
    "EXPLAINERS": "interpbench.explainers",
    "METRICS": "interpbench.metrics",
    "DATASETS": "interpbench.data",
    "wrap": "interpbench.zoo.wrapped",
    "score": "interpbench.api",
    "explain": "interpbench.api",
    "Scores": "interpbench.api",
    "run": "interpbench.api",
    "SweepError": "interpbench.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interpbench' has no attribute '{name}'; public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
