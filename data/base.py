"""Datasets as uint8 tensors in memory, decoded once and cached as ``.npy`` files.

A dataset builder returns a :class:`Dataset`: a train and a test :class:`Split` of uint8 images
``[N, 3, H, W]``, int64 labels ``[N]`` and, where the data has them, boolean ground-truth object
masks ``[N, H, W]``. Models receive images scaled to ``[0, 1]`` and normalise them themselves with
the dataset's ``mean`` and ``std``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from interpbench.images import to_float  # noqa: F401 (re-exported: data.base.to_float)
from interpbench.integrity import data_cache_meta, file_entry
from interpbench.storage import (
    atomic_numpy_save,
    atomic_write_json,
    data_dir,
    read_json,
    stable_hash,
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found or fetched; the message is one line naming what was tried."""


class ImageFolderError(ValueError):
    """An ImageFolder tree that cannot be used as it is (a file that does not decode, an empty
    class folder, class folders that differ between splits); the message is one line naming the
    file, folder or classes."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    masks: Optional[torch.Tensor] = None  # bool [N, H, W]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> "Split":
        masks = None if self.masks is None else self.masks[indices]
        return Split(self.images[indices], self.labels[indices], masks)


@dataclass
class Dataset:
    name: str
    classes: List[str]
    train: Split
    test: Split
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    identity: Dict[str, Any] = field(default_factory=dict)  # what determines the content
    augment: str = "crop_flip"  # the training augmentation that suits this data (recipe "auto")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def model_config(self) -> Dict[str, Any]:
        """The keyword arguments every zoo builder takes from the data."""
        return {
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
        }


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``[N, 3, H, W]``, in ``[0, 1]`` units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].double().div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


_ARRAYS = ("train_images", "train_labels", "train_masks", "test_images", "test_labels", "test_masks")


def cached_dataset(
    name: str,
    key: Dict[str, Any],
    build: Callable[[], Dict[str, Any]],
    cache_root: Optional[Path] = None,
) -> Dataset:
    """Load a dataset from the decoded-array cache, building (decoding) it on a miss.

    ``build`` returns a dict with numpy arrays under the names in ``_ARRAYS`` (masks optional)
    and ``classes``, ``mean``, ``std``. ``key`` identifies the content; its hash names the
    cache folder, so a second run decodes nothing.
    """
    root = Path(cache_root) if cache_root else data_dir()
    folder = root / f"{name}-{stable_hash(key)}"
    meta_path = folder / "meta.json"
    # checked against its manifest (a corrupt array is quarantined in <root>/../quarantine/ and decoded again)
    meta = data_cache_meta(folder, root.parent)
    if meta is None:
        start = time.time()
        built = build()
        arrays = {}
        for array_name in _ARRAYS:
            if built.get(array_name) is not None:
                path = atomic_numpy_save(np.ascontiguousarray(built[array_name]), folder / f"{array_name}.npy")
                arrays[path.name] = file_entry(path)
        meta = {
            "name": name,
            "key": key,
            "classes": list(built["classes"]),
            "mean": list(built["mean"]),
            "std": list(built["std"]),
            "build_seconds": round(time.time() - start, 2),
            "arrays": arrays,  # the manifest: each file's size and sha256
        }
        atomic_write_json(meta_path, meta)  # written last: its presence marks a complete cache
        meta = read_json(meta_path)

    def load(array_name: str) -> Optional[torch.Tensor]:
        path = folder / f"{array_name}.npy"
        return torch.from_numpy(np.load(path)) if path.exists() else None

    splits = {}
    for split in ("train", "test"):
        masks = load(f"{split}_masks")
        splits[split] = Split(
            images=load(f"{split}_images"),
            labels=load(f"{split}_labels").long(),
            masks=None if masks is None else masks.bool(),
        )
    return Dataset(
        name=name,
        classes=meta["classes"],
        train=splits["train"],
        test=splits["test"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        identity=key,
    )


def stack_hwc(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack HWC uint8 images into an NCHW array."""
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
