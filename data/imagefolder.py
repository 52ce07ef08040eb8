"""``imagefolder``: any root with ``train/`` and ``val/`` or ``test/`` class folders.

For ImageNet-100, Imagenette and the like. Images are resized (short side to ``image_size``) and
centre-cropped to ``image_size`` x ``image_size`` once, when decoded into the cache; 16-bit, float,
palette, transparent and CMYK files become 8-bit RGB as :func:`data.folders.rgb_image` describes.
Hidden files and folders (macOS ``._x.png``, ``.ipynb_checkpoints/``) are skipped everywhere; a file
that does not decode, an empty class folder, class folders that differ between ``train/`` and the
evaluation split, or both ``val/`` and ``test/`` without ``eval_split`` raise ``ImageFolderError``
(one line). The cache key covers every image's relative path, size and modification time, so that
replacing an image decodes the data again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from interpbench.data import DATASETS
from interpbench.data.base import (
    Dataset,
    DatasetNotFoundError,
    ImageFolderError,
    cached_dataset,
    channel_stats,
)
from interpbench.data.folders import decode_split_folders, folder_fingerprint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_SPLITS = ("val", "test")


def eval_split_dir(base: Path, eval_split: Optional[str]) -> Path:
    """The folder models are evaluated on: ``base/<eval_split>``, or, when ``eval_split`` is None,
    the one of ``base/val`` and ``base/test`` that exists (both existing is an error)."""
    if eval_split is not None and eval_split not in EVAL_SPLITS:
        raise ImageFolderError(f"data.eval_split must be val or test (or unset), got {eval_split!r}")
    present = [split for split in EVAL_SPLITS if (base / split).is_dir()]
    if not (base / "train").is_dir() or not present:
        raise DatasetNotFoundError(
            f"imagefolder not found: tried {base / 'train'} and {base / 'val'} or {base / 'test'}; "
            "pass data.root=<dir> or use data=synthetic"
        )
    if eval_split is None:
        if len(present) > 1:
            raise ImageFolderError(
                f"{base} holds both val/ and test/; choose the split models are evaluated on with "
                "data.eval_split=val or data.eval_split=test"
            )
        return base / present[0]
    if eval_split not in present:
        raise DatasetNotFoundError(
            f"data.eval_split={eval_split}, but {base / eval_split} is not a folder; "
            f"{base} holds {present[0]}/ (set data.eval_split={present[0]} or leave it unset)"
        )
    return base / eval_split


@DATASETS.register("imagefolder")
def imagefolder(
    root: Optional[str] = None,
    image_size: int = 224,
    imagenet_stats: bool = True,
    eval_split: Optional[str] = None,
) -> Dataset:
    """Class folders under ``root/train`` and ``root/val`` or ``root/test`` (``eval_split``: which
    of the two models are evaluated on; needed only when both exist). ``imagenet_stats``: normalise
    with ImageNet's channel mean and std, else with the training images' own."""
    if root is None:
        raise DatasetNotFoundError("data=imagefolder needs data.root=<dir with train/ and val/ or test/>")
    base = Path(root).expanduser().resolve()
    test_dir = eval_split_dir(base, eval_split)
    key = {"root": str(base), "image_size": image_size, "eval_split": test_dir.name,
           "files": folder_fingerprint({"train": base / "train", "test": test_dir})}

    def build() -> Dict[str, Any]:
        import torch

        built = decode_split_folders(base / "train", test_dir, size=image_size)
        built["mean"], built["std"] = channel_stats(torch.from_numpy(built["train_images"]))
        return built

    dataset = cached_dataset(f"imagefolder-{base.name}", key, build)
    if imagenet_stats:  # the cache holds the data's own statistics either way
        dataset.mean, dataset.std = IMAGENET_MEAN, IMAGENET_STD
    return dataset
