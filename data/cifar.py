"""``cifar10`` and ``cifar100``, from torchvision's layout, an ImageFolder layout, or a download.

Under ``root`` the loader looks, in order, for torchvision's extracted archive
(``cifar-10-batches-py`` / ``cifar-100-python``), then for an ImageFolder layout
(``train/<class>/*`` and ``test/<class>/*``), then downloads with torchvision. Offline with
nothing found, it fails with one line naming the paths it tried. The cache key covers each
file's relative path, size and modification time, so that replaced files are decoded again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from interpbench.data import DATASETS
from interpbench.data.base import (
    Dataset,
    DatasetNotFoundError,
    cached_dataset,
    channel_stats,
)
from interpbench.data.folders import decode_split_folders, files_fingerprint, folder_fingerprint
from interpbench.storage import store_dir

_ARCHIVE_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _torchvision_class(name: str) -> Any:
    from torchvision import datasets as tv_datasets

    return tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100


def _from_torchvision(name: str, root: Path, download: bool = False) -> Dict[str, Any]:
    cls = _torchvision_class(name)
    built: Dict[str, Any] = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(str(root), train=train, download=download)
        built[f"{split}_images"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        built[f"{split}_labels"] = np.asarray(ds.targets, dtype=np.int64)
        built["classes"] = list(ds.classes)
    return built


def load_cifar(name: str, root: Optional[str], download: bool) -> Dataset:
    base = Path(root).expanduser().resolve() if root else store_dir() / "datasets" / name
    archive = base / _ARCHIVE_FOLDER[name]
    if base.name == _ARCHIVE_FOLDER[name]:  # the user pointed at the extracted folder itself
        archive, base = base, base.parent
    test_dir = next((base / s for s in ("test", "val") if (base / s).is_dir()), base / "test")

    if archive.is_dir():
        # the batch files' names, sizes and modification times: a replaced file decodes again
        batches = sorted(p for p in archive.iterdir() if p.is_file() and not p.name.startswith("."))
        key = {"layout": "torchvision", "root": str(base), "files": files_fingerprint(archive, batches)}
        build = lambda: _from_torchvision(name, base)  # noqa: E731
    elif (base / "train").is_dir() and test_dir.is_dir():
        key = {"layout": "imagefolder", "root": str(base),
               "files": folder_fingerprint({"train": base / "train", "test": test_dir})}
        build = lambda: decode_split_folders(base / "train", test_dir)  # noqa: E731
    elif download:
        try:
            _from_torchvision(name, base, download=True)
        except Exception as error:  # offline, or the server refused
            raise DatasetNotFoundError(
                f"{name} not found: tried {archive} (torchvision layout), {base / 'train'} and "
                f"{test_dir} (ImageFolder layout), and a download into {base} failed "
                f"({type(error).__name__}); pass data.root=<dir> or use data=synthetic"
            ) from None
        return load_cifar(name, str(base), download=False)
    else:
        raise DatasetNotFoundError(
            f"{name} not found: tried {archive} (torchvision layout) and {base / 'train'}, "
            f"{test_dir} (ImageFolder layout); downloads are off (data.download=false); "
            "pass data.root=<dir> or use data=synthetic"
        )

    def build_with_stats() -> Dict[str, Any]:
        import torch

        built = build()
        built["mean"], built["std"] = channel_stats(torch.from_numpy(built["train_images"]))
        return built

    return cached_dataset(name, key, build_with_stats)


@DATASETS.register("cifar10")
def cifar10(root: Optional[str] = None, download: bool = True) -> Dataset:
    """CIFAR-10 (50,000 train and 10,000 test images, 10 classes)."""
    return load_cifar("cifar10", root, download)


@DATASETS.register("cifar100")
def cifar100(root: Optional[str] = None, download: bool = True) -> Dataset:
    """CIFAR-100 (50,000 train and 10,000 test images, 100 classes)."""
    return load_cifar("cifar100", root, download)
