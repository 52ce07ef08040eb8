"""Import every module of a package so that each one's registrations run.

Adding a model, explainer, metric or dataset is one new file in its package: the package's
``__init__`` calls :func:`import_submodules`, which imports all of its modules in name order.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: ModuleType) -> None:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
