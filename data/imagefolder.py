"""``imagefolder``: any root with ``train/`` and ``val/`` or ``test/`` class folders.

For ImageNet-100, Imagenette and the like. Images are resized (short side) and centre-cropped
to ``image_size`` once, when decoded into the cache. Hidden files and folders (macOS ``._x.png``,
``.ipynb_checkpoints/``) are skipped; a file that does not decode, an empty class folder, or class
folders that differ between ``train/`` and ``val/``/``test/`` raise ``ImageFolderError`` (one line).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from interpbench.data import DATASETS
from interpbench.data.base import (
    Dataset,
    DatasetNotFoundError,
    cached_dataset,
    channel_stats,
)
from interpbench.data.folders import decode_split_folders, folder_fingerprint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@DATASETS.register("imagefolder")
def imagefolder(
    root: Optional[str] = None, image_size: int = 224, imagenet_stats: bool = True
) -> Dataset:
    """Class folders under ``root/train`` and ``root/val`` (or ``root/test``)."""
    if root is None:
        raise DatasetNotFoundError("data=imagefolder needs data.root=<dir with train/ and val/ or test/>")
    base = Path(root).expanduser().resolve()
    test_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if not (base / "train").is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"imagefolder not found: tried {base / 'train'} and {base / 'val'} or {base / 'test'}; "
            "pass data.root=<dir> or use data=synthetic"
        )
    key = {"root": str(base), "image_size": image_size,
           "files": folder_fingerprint({"train": base / "train", "test": test_dir})}

    def build() -> Dict[str, Any]:
        import torch

        built = decode_split_folders(base / "train", test_dir, size=image_size)
        if imagenet_stats:
            built["mean"], built["std"] = IMAGENET_MEAN, IMAGENET_STD
        else:
            built["mean"], built["std"] = channel_stats(torch.from_numpy(built["train_images"]))
        return built

    name = f"imagefolder-{base.name}"
    return cached_dataset(name, key, build)
