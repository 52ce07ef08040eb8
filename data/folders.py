"""Decoding an ImageFolder layout (``<split>/<class>/<image>``) into uint8 arrays."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from interpbench.data.base import ImageFolderError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def is_hidden(path: Path) -> bool:
    """Hidden files and folders (``.ipynb_checkpoints``, macOS ``._x.png`` resource forks) are skipped."""
    return path.name.startswith(".")


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` (the first ``limit`` names, then how many more), or ``none``."""
    names = list(names)
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def list_image_folder(split_dir: Path) -> Tuple[List[str], List[Path], List[int]]:
    """Classes (sorted folder names), image paths (sorted within each class) and labels.

    Hidden files and folders are skipped; no class folder, or a class folder without images,
    raises :class:`ImageFolderError` naming the folder.
    """
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p))
    if not classes:
        raise ImageFolderError(f"no class folders under {split_dir} (expected {split_dir}/<class>/<image>)")
    paths: List[Path] = []
    labels: List[int] = []
    for index, name in enumerate(classes):
        files = sorted(
            p for p in (split_dir / name).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p) and p.is_file()
        )
        if not files:
            raise ImageFolderError(
                f"class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([index] * len(files))
    return classes, paths, labels


def _one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``error`` on one line, at most about ``limit`` characters."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _decode(path: Path, size: Optional[int]) -> np.ndarray:
    """One image as ``[H, W, 3]`` uint8; a file that does not decode raises :class:`ImageFolderError`."""
    try:
        return _decode_file(path, size)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ...)
        raise ImageFolderError(
            f"cannot decode {path} ({_one_line(error)}); fix or remove the file"
        ) from None


def _decode_file(path: Path, size: Optional[int]) -> np.ndarray:
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

    # The bar appears after a second (a small folder decodes without one), and is cleared when a
    # file does not decode, so that the error stays the only line.
    bar = tqdm(total=len(paths), desc=desc, unit="img", mininterval=1.0, delay=1.0)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            arrays = []
            for array in pool.map(lambda p: _decode(p, size), paths):
                arrays.append(array)
                bar.update(1)
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ImageFolderError(
            f"images under {Path(paths[0]).parent.parent} differ in size ({sorted(shapes)[:3]} ...); "
            "set data.image_size to resize them"
        )
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def folder_fingerprint(split_dirs: Dict[str, Path]) -> Dict[str, int]:
    """Number of image files per split (hidden ones not counted), part of the cache key of a
    folder dataset."""
    return {
        split: sum(
            1 for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        for split, folder in split_dirs.items()
    }


def decode_split_folders(train_dir: Path, test_dir: Path, size: Optional[int] = None) -> Dict[str, object]:
    """Decode a train and a test ImageFolder into the arrays ``data.base.cached_dataset`` stores.

    Both folders are listed and checked (same classes, no empty class folder) before anything is
    decoded; every problem raises :class:`ImageFolderError` with a one-line message.
    """
    listed = {"train": list_image_folder(train_dir), "test": list_image_folder(test_dir)}
    train_classes, test_classes = listed["train"][0], listed["test"][0]
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ImageFolderError(
            f"class folders differ between {train_dir} and {test_dir}: "
            f"only in {train_dir.name}: {_name_list(only_train)}; "
            f"only in {test_dir.name}: {_name_list(only_test)}"
        )
    built: Dict[str, object] = {"classes": train_classes}
    for split, folder in (("train", train_dir), ("test", test_dir)):
        _, paths, labels = listed[split]
        built[f"{split}_images"] = decode_images(paths, size=size, desc=f"decoding {folder}")
        built[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return built
