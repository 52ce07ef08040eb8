"""Explanation methods: ``(model, x, target) -> saliency [B, H, W]``, batched, in torch.

Each method is a class registered in ``EXPLAINERS``; hyper-parameters go to ``__init__``, data to
``__call__``. Maps are raw (no normalisation inside) at input resolution.
"""
from __future__ import annotations

from interpbench.registry import Registry

EXPLAINERS = Registry("explainer")

import interpbench.explainers as _self  # noqa: E402
from interpbench.discovery import import_submodules  # noqa: E402

import_submodules(_self)
