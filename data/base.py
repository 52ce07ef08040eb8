"""Datasets as uint8 tensors, decoded once and cached as ``.npy`` files that every process maps.

A dataset builder returns a :class:`Dataset`: a train and a test :class:`Split` of uint8 images
``[N, 3, H, W]``, int64 labels ``[N]`` and, where the data has them, boolean ground-truth object
masks ``[N, H, W]``. Models receive images scaled to ``[0, 1]`` and normalise them themselves with
the dataset's ``mean`` and ``std``.

Images and masks loaded from the cache are read-only memory maps of the cached ``.npy`` files:
parallel processes (the sweep and its jobs) share one copy of the data in the operating system's
page cache, and each process copies only what it indexes (a batch, an evaluation subset). They must
not be written in place (the memory is mapped read-only: a write would crash the process); every
consumer converts a batch first (``to_float(split.images[index])`` makes a new tensor).
"""
from __future__ import annotations

import fcntl
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    """An ImageFolder tree that cannot be used as it is (a file that does not decode or whose pixel
    values cannot be read as 8-bit, an empty class folder, class folders that differ between
    splits, both ``val/`` and ``test/`` without ``eval_split``); the message is one line naming the
    file, folder or classes."""


@dataclass
class Split:
    """Images, labels and masks of one split. From the cache, ``images`` and ``masks`` are
    read-only memory maps (see the module docstring): index them, never write them in place."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    masks: Optional[torch.Tensor] = None  # bool [N, H, W]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> "Split":
        """The rows at ``indices``, copied into this process's memory (writable, unlike the
        memory-mapped split). For a large subset read batch by batch, :meth:`lazy_subset`."""
        masks = None if self.masks is None else self.masks[indices]
        return Split(self.images[indices], self.labels[indices], masks)

    def lazy_subset(self, indices: torch.Tensor) -> "LazySplit":
        """The rows at ``indices`` without copying them: each batch indexed is gathered then."""
        return LazySplit(self, torch.as_tensor(indices, dtype=torch.long))


class Rows:
    """The rows ``indices`` of ``data`` (``[N, ...]``), gathered when indexed: ``rows[i:j]``,
    ``rows[index_tensor]`` and ``rows[k]`` are tensors (copies) of those rows, ``rows.shape`` is
    ``[len(indices), ...]``. Nothing is copied until then."""

    def __init__(self, data: torch.Tensor, indices: torch.Tensor) -> None:
        self.data = data
        self.indices = indices

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.indices), *self.data.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Any) -> torch.Tensor:
        return self.data[self.indices[key]]


@dataclass
class LazySplit:
    """A subset of a :class:`Split` read batch by batch (:meth:`Split.lazy_subset`): ``images`` and
    ``masks`` are :class:`Rows` (index them to get tensors of a batch), ``labels`` a tensor. What a
    training loop over a subset needs, without a copy of the subset's images in each process."""

    base: Split
    indices: torch.Tensor

    def __post_init__(self) -> None:
        self.images = Rows(self.base.images, self.indices)
        self.masks = None if self.base.masks is None else Rows(self.base.masks, self.indices)
        self.labels = self.base.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: torch.Tensor) -> Split:
        """The rows at ``indices`` of this subset, copied (as :meth:`Split.subset`)."""
        return self.base.subset(self.indices[torch.as_tensor(indices, dtype=torch.long)])


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


def channel_stats(
    images: torch.Tensor, chunk_bytes: int = 64 << 20
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``[N, 3, H, W]``, in ``[0, 1]`` units.

    Computed over chunks of images whose float64 copy takes at most ``chunk_bytes`` (one image at
    least)."""
    chunk = max(1, chunk_bytes // (8 * max(1, images[0].numel())))
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
_MAPPED = ("images", "masks")  # memory-mapped; labels are small and read into memory


def load_array(path: Path, mapped: bool = True) -> np.ndarray:
    """A cached ``.npy`` array: a read-only ``np.memmap`` of the file (``mapped``), else in memory."""
    if mapped:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # an empty array cannot be mapped
            pass
    return np.load(path, allow_pickle=False)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on ``array``'s memory, without a copy (a read-only memory map stays read-only:
    torch's warning about non-writable arrays is not shown)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path``, held by one process at a time."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_cache(
    name: str, key: Dict[str, Any], build: Callable[[], Dict[str, Any]], folder: Path
) -> Dict[str, Any]:
    """Build the arrays, write them and their manifest; returns the written ``meta.json``."""
    start = time.time()
    built = build()
    arrays = {}
    for array_name in _ARRAYS:
        if built.get(array_name) is not None:
            path = atomic_numpy_save(np.ascontiguousarray(built[array_name]), folder / f"{array_name}.npy")
            arrays[path.name] = file_entry(path)
            built[array_name] = None  # written: this process maps it like every other
    meta = {
        "name": name,
        "key": key,
        "classes": list(built["classes"]),
        "mean": list(built["mean"]),
        "std": list(built["std"]),
        "build_seconds": round(time.time() - start, 2),
        "arrays": arrays,  # the manifest: each file's size and sha256
    }
    del built
    atomic_write_json(folder / "meta.json", meta)  # written last: its presence marks a complete cache
    return read_json(folder / "meta.json")


def cached_dataset(
    name: str,
    key: Dict[str, Any],
    build: Callable[[], Dict[str, Any]],
    cache_root: Optional[Path] = None,
) -> Dataset:
    """Load a dataset from the decoded-array cache, building (decoding) it on a miss.

    ``build`` returns a dict with numpy arrays under the names in ``_ARRAYS`` (masks optional)
    and ``classes``, ``mean``, ``std``. ``key`` identifies the content; its hash names the
    cache folder, so a second run decodes nothing. One process builds at a time (a lock in the
    folder); the others wait, then read what it wrote. Images and masks are returned as read-only
    memory maps of the cached files (see the module docstring).
    """
    root = Path(cache_root) if cache_root else data_dir()
    folder = root / f"{name}-{stable_hash(key)}"
    # checked against its manifest (a corrupt array is quarantined in <root>/../quarantine/ and decoded again)
    meta = data_cache_meta(folder, root.parent)
    if meta is None:
        created = [p for p in (root, folder) if not p.exists()]
        with _exclusive(folder / "build.lock"):
            meta = data_cache_meta(folder, root.parent)  # built by another process meanwhile?
            if meta is None:
                try:
                    meta = _build_cache(name, key, build, folder)
                except BaseException:
                    # a failed build leaves nothing behind: no lock file, no empty folders
                    (folder / "build.lock").unlink(missing_ok=True)
                    for path in reversed(created):
                        try:
                            path.rmdir()
                        except OSError:
                            pass
                    raise

    def load(array_name: str) -> Optional[torch.Tensor]:
        path = folder / f"{array_name}.npy"
        if not path.exists():
            return None
        return as_tensor(load_array(path, mapped=array_name.split("_", 1)[1] in _MAPPED))

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
