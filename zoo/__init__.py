"""The model zoo: every model family registered in ``MODELS`` behind one interface.

``create_model(name, **kwargs)`` builds a model; ``MODELS.list()`` lists the names. Each family is
one module here and registers its entry points with ``@MODELS.register``; registration info
carries the family and the default training recipe.
"""
from __future__ import annotations

from typing import Any

from interpbench.registry import Registry

MODELS = Registry("model")


def create_model(name: str, **kwargs: Any) -> "ZooModel":
    """Build the zoo model ``name`` (for example ``fa_cnn``) with its builder's arguments."""
    return MODELS.create(name, **kwargs)


import interpbench.zoo as _self  # noqa: E402
from interpbench.discovery import import_submodules  # noqa: E402

import_submodules(_self)

from interpbench.zoo.base import ZooModel  # noqa: E402,F401
