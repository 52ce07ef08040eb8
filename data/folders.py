"""Decoding an ImageFolder layout (``<split>/<class>/<image>``) into uint8 arrays."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def list_image_folder(split_dir: Path) -> Tuple[List[str], List[Path], List[int]]:
    """Classes (sorted folder names), image paths (sorted within each class) and labels."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    paths: List[Path] = []
    labels: List[int] = []
    for index, name in enumerate(classes):
        files = sorted(
            p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([index] * len(files))
    return classes, paths, labels


def _decode(path: Path, size: Optional[int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            # Resize the short side to `size`, then take the central square.
            width, height = image.size
            scale = size / min(width, height)
            image = image.resize(
                (max(size, round(width * scale)), max(size, round(height * scale))),
                Image.BILINEAR,
            )
            width, height = image.size
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


def decode_images(
    paths: Sequence[Path], size: Optional[int] = None, desc: str = "decoding", workers: int = 4
) -> np.ndarray:
    """Decode image files into an ``[N, 3, H, W]`` uint8 array (all the same size after resizing)."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(
            tqdm(pool.map(lambda p: _decode(p, size), paths), total=len(paths), desc=desc,
                 unit="img", mininterval=1.0)
        )
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images under {Path(paths[0]).parent.parent} differ in size ({sorted(shapes)[:3]} ...); "
            "set data.image_size to resize them"
        )
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def folder_fingerprint(split_dirs: Dict[str, Path]) -> Dict[str, int]:
    """Number of image files per split, part of the cache key of a folder dataset."""
    return {
        split: sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for split, folder in split_dirs.items()
    }


def decode_split_folders(train_dir: Path, test_dir: Path, size: Optional[int] = None) -> Dict[str, object]:
    """Decode a train and a test ImageFolder into the arrays ``data.base.cached_dataset`` stores."""
    built: Dict[str, object] = {}
    for split, folder in (("train", train_dir), ("test", test_dir)):
        classes, paths, labels = list_image_folder(folder)
        if not paths:
            raise ValueError(f"no images under {folder}/<class>/")
        if built.get("classes", classes) != classes:
            raise ValueError(f"class folders differ between {train_dir} and {test_dir}")
        built["classes"] = classes
        built[f"{split}_images"] = decode_images(paths, size=size, desc=f"decoding {folder}")
        built[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return built
