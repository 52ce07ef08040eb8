"""Faithfulness metrics: ``metric(model, x, y, saliency) -> per-image scores (and curves)``.

Each metric is a class registered in ``METRICS``; hyper-parameters go to ``__init__``, data to
``__call__``; each declares its name and whether a higher score is better.
"""
from __future__ import annotations

from interpbench.registry import Registry

METRICS = Registry("metric")

import interpbench.metrics as _self  # noqa: E402
from interpbench.discovery import import_submodules  # noqa: E402

import_submodules(_self)
