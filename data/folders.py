"""Decoding an ImageFolder layout (``<split>/<class>/<image>``) into uint8 arrays.

Every image becomes 8-bit RGB (see :func:`rgb_image` for 16-bit, float, palette, alpha and CMYK
files). Hidden files and folders (a name starting with ``.``: ``.ipynb_checkpoints/``, macOS
``._x.png``, ``.DS_Store``) are skipped at every depth, both when listing classes and images and in
the cache key (:func:`folder_fingerprint`), which covers each image's relative path, size and
modification time, so that a replaced image invalidates the decoded arrays.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from interpbench.data.base import ImageFolderError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
# Bump when decoding changes what an image decodes to: it is part of every folder dataset's cache key.
DECODER_VERSION = 2
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


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


def _images_under(folder: Path) -> List[Path]:
    """Image files under ``folder`` at any depth, sorted; hidden files and folders are skipped."""
    found: List[Path] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(here) / name for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(p for p in found if p.is_file())


def list_image_folder(split_dir: Path) -> Tuple[List[str], List[Path], List[int]]:
    """Classes (sorted folder names), image paths (sorted within each class) and labels.

    The images of a class are the image files anywhere under its folder. Hidden files and folders
    are skipped; no class folder, or a class folder without images, raises
    :class:`ImageFolderError` naming the folder.
    """
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p))
    if not classes:
        raise ImageFolderError(f"no class folders under {split_dir} (expected {split_dir}/<class>/<image>)")
    paths: List[Path] = []
    labels: List[int] = []
    for index, name in enumerate(classes):
        files = _images_under(split_dir / name)
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
    except (MemoryError, ImageFolderError):
        raise
    except Exception as error:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ...)
        raise ImageFolderError(
            f"cannot decode {path} ({_one_line(error)}); fix or remove the file"
        ) from None


def _gray_to_rgb(gray: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").convert("RGB")


def rgb_image(image: Any, path: Path) -> Any:
    """``image`` (an open PIL image) as an 8-bit RGB PIL image.

    - 16-bit grayscale (``I;16``, ``I;16B``, ...) and 32-bit integer (``I``) images: each value ``v``
      becomes ``round(v / 257)``, so that 0 stays 0 and 65535 becomes 255 (a fixed scale, not the
      file's own range, so that all images of a dataset keep one brightness scale); an ``I`` image
      with values outside 0 to 65535 is refused;
    - 32-bit float (``F``) images: values in ``[0, 1]`` are scaled by 255, values in ``[0, 255]``
      are kept; negative, larger or non-finite values are refused;
    - images with transparency (``LA``, ``PA``, ``RGBA``, and ``P``, ``L`` or ``RGB`` with a
      transparent colour): composited over a white background;
    - everything else (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...): Pillow's conversion.

    A refused image raises :class:`ImageFolderError` (one line naming the file).
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ImageFolderError(
                f"cannot decode {path} (32-bit integer image with values {low} to {high}, outside the "
                "16-bit range 0 to 65535); convert it to 8-bit or 16-bit"
            )
        return _gray_to_rgb((values.astype(np.uint32) + 128) // 257)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ImageFolderError(f"cannot decode {path} (32-bit float image with NaN or infinite values); "
                                   "convert it to 8-bit or 16-bit")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise ImageFolderError(
                f"cannot decode {path} (32-bit float image with values {low:g} to {high:g}, neither in "
                "[0, 1] nor in [0, 255]); convert it to 8-bit or 16-bit"
            )
        scale = 255.0 if high <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.rint(values * scale), 0, 255))
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        from PIL import Image

        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return image.convert("RGB")


def _decode_file(path: Path, size: Optional[int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        image = rgb_image(opened, path)
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
    paths: Sequence[Path], size: Optional[int] = None, desc: str = "decoding", workers: int = 4,
    chunk: int = 1024,
) -> np.ndarray:
    """Decode image files into an ``[N, 3, H, W]`` uint8 array (all the same size after resizing).

    The worker threads write each image into one preallocated array, ``chunk`` images at a time,
    so that decoding holds one copy of the data and no queue of decoded images.
    """
    from tqdm import tqdm

    if not paths:
        raise ImageFolderError(f"no images to decode ({desc})")
    # The bar appears after a second (a small folder decodes without one), and is cleared when a
    # file does not decode, so that the error stays the only line.
    bar = tqdm(total=len(paths), desc=desc, unit="img", mininterval=1.0, delay=1.0)
    try:
        first = _decode(paths[0], size)
        height, width = first.shape[:2]
        out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
        out[0] = first.transpose(2, 0, 1)
        bar.update(1)

        def decode_into(index: int) -> None:
            array = _decode(paths[index], size)
            if array.shape[:2] != (height, width):
                raise ImageFolderError(
                    f"images differ in size: {paths[0]} is {width}x{height}, {paths[index]} is "
                    f"{array.shape[1]}x{array.shape[0]}; set data.image_size to resize them"
                )
            out[index] = array.transpose(2, 0, 1)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for start in range(1, len(paths), chunk):
                    for _ in pool.map(decode_into, range(start, min(len(paths), start + chunk))):
                        bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # the images not started are not decoded
                raise
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    return out


def files_fingerprint(folder: Path, paths: Iterable[Path]) -> Dict[str, Any]:
    """``{"files": count, "sha256": hash}`` of the files ``paths`` under ``folder``: the hash covers
    each file's path relative to ``folder``, its size and its modification time (ns), so that
    adding, removing, renaming or rewriting a file changes it."""
    digest = hashlib.sha256()
    count = 0
    for path in paths:
        stat = os.stat(path)
        relative = Path(path).relative_to(folder).as_posix()
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def folder_fingerprint(split_dirs: Dict[str, Path]) -> Dict[str, Any]:
    """Per split, the images that decoding reads (hidden ones skipped) as :func:`files_fingerprint`,
    and the decoder version: part of the cache key of a folder dataset."""
    fingerprint: Dict[str, Any] = {"decoder": DECODER_VERSION}
    for split, folder in split_dirs.items():
        _, paths, _ = list_image_folder(folder)
        fingerprint[split] = files_fingerprint(folder, paths)
    return fingerprint


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
