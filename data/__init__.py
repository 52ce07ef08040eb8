"""Dataset loaders: ``synthetic`` (built in), ``cifar10``, ``cifar100``, ``imagefolder``.

Each loader is registered in ``DATASETS`` and returns a :class:`data.base.Dataset` of uint8
tensors, decoded once and cached under the work directory; the images are read-only memory maps
of the cached files, shared by every process that loads them.
"""
from __future__ import annotations

from typing import Any, Mapping

from interpbench.registry import Registry
from interpbench.storage import plain

DATASETS = Registry("dataset")


def load_dataset(config: Mapping[str, Any]) -> "Dataset":
    """Build the dataset named by ``config["name"]`` with the rest of ``config`` as arguments."""
    args = dict(plain(config))
    name = args.pop("name", None)
    if name is None:
        raise ValueError(f"data config has no 'name'; valid datasets: {', '.join(DATASETS.list())}")
    return DATASETS.create(name, **args)


import interpbench.data as _self  # noqa: E402
from interpbench.discovery import import_submodules  # noqa: E402

import_submodules(_self)

from interpbench.data.base import Dataset  # noqa: E402,F401
