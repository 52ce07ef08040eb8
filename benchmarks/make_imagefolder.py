"""Write a 10-class ImageFolder of ImageNet-sized JPEGs (``DIR/train/<class>/`` and ``DIR/val/<class>/``)
from the shared CIFAR-10 archive, each 32x32 image upsampled (bicubic) to ``--size`` pixels.

The training images come from CIFAR-10's training split, the validation images from its test split,
the first ``N`` of each class in the official order. The default, 800 training and 200 validation
images per class, writes 10,000 JPEGs (quality 90) of 224x224, about 70 MB (1.5 GB decoded), in about 30 s on
two cores. It stands in for a user's ImageFolder dataset (``data=imagefolder data.root=DIR``) when
measuring decoding, caching and memory at ImageNet resolution. ``DIR`` must lie outside the
repository (data is never written into it) and must not hold a ``train/`` or ``val/`` folder yet.

    .venv/bin/python benchmarks/make_imagefolder.py /tmp/cifar10-224
    .venv/bin/python benchmarks/make_imagefolder.py /tmp/small-224 --per-class 40 --val-per-class 10
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _wanted(name: str, counts: Dict[str, int]) -> Optional[Tuple[str, str, int]]:
    """``(split, class, index)`` of an archive member ``.../<train|test>/<class>/NNNN.jpg`` that is
    among the first ``counts[split]`` of its class, else ``None``."""
    parts = name.split("/")
    if len(parts) < 3 or parts[-3] not in counts or parts[-2] not in CLASSES:
        return None
    stem, dot, suffix = parts[-1].partition(".")
    if not dot or suffix.lower() != "jpg" or not stem.isdigit():
        return None
    index = int(stem)
    return (parts[-3], parts[-2], index) if index < counts[parts[-3]] else None


def source_images(archive: Path, counts: Dict[str, int]) -> Iterator[Tuple[str, str, int, bytes]]:
    """The wanted CIFAR-10 JPEGs of ``archive`` as ``(split, class, index, bytes)``, read in one pass."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            found = _wanted(member.name, counts) if member.isfile() else None
            if found is not None:
                handle = tar.extractfile(member)
                if handle is not None:
                    yield (*found, handle.read())


def write_imagefolder(
    out: Path, per_class: int = 800, val_per_class: int = 200, size: int = 224,
    archive: Path = ARCHIVE, workers: int = 2, quality: int = 90,
) -> Dict[str, int]:
    """Write the ImageFolder under ``out``; returns the number of images written per split."""
    from PIL import Image

    out = Path(out).expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"error: {out} lies inside the repository {ROOT}; choose a folder outside it "
                         "(e.g. /tmp/cifar10-224)")
    for split in ("train", "val"):
        if (out / split).exists():
            raise SystemExit(f"error: {out / split} exists already; choose an empty or new folder")
    if not archive.exists():
        raise SystemExit(f"error: CIFAR-10 archive not found at {archive}; pass --archive <cifar10-jpeg.tar.gz>")
    if per_class > 5000 or val_per_class > 1000:
        raise SystemExit(f"error: CIFAR-10 has 5000 training and 1000 test images per class, asked for "
                         f"--per-class {per_class} and --val-per-class {val_per_class}")
    counts = {"train": per_class, "test": val_per_class}
    written = {"train": 0, "val": 0}

    def convert(item: Tuple[str, str, int, bytes]) -> str:
        split, name, index, data = item
        split = "val" if split == "test" else split
        with Image.open(io.BytesIO(data)) as image:
            big = image.convert("RGB").resize((size, size), Image.BICUBIC)
        path = out / split / name / f"{index:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        big.save(path, quality=quality)
        return split

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split in pool.map(convert, source_images(archive, counts)):
            written[split] += 1
    expected = {"train": per_class * len(CLASSES), "val": val_per_class * len(CLASSES)}
    if written != expected:
        raise SystemExit(f"error: wrote {written} images, expected {expected}: is {archive} CIFAR-10's "
                         "ImageFolder archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg)?")
    return written


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the ImageFolder root to write (outside the repository)")
    parser.add_argument("--per-class", type=int, default=800, help="training images per class (default 800)")
    parser.add_argument("--val-per-class", type=int, default=200, help="validation images per class (default 200)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help=f"CIFAR-10 JPEG archive (default {ARCHIVE})")
    parser.add_argument("--workers", type=int, default=2, help="encoding threads (default 2)")
    args = parser.parse_args(argv)
    for name in ("per_class", "val_per_class", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    began = time.time()
    written = write_imagefolder(args.dir, args.per_class, args.val_per_class, args.size, args.archive, args.workers)
    total_mb = sum(p.stat().st_size for p in Path(args.dir).rglob("*.jpg")) / 1e6
    print(f"wrote {written['train']} training and {written['val']} validation images of {args.size}x{args.size} "
          f"({total_mb:.0f} MB of JPEG) under {Path(args.dir).resolve()} in {time.time() - began:.0f} s; "
          f"use data=imagefolder data.root={Path(args.dir).resolve()}", file=sys.stdout)


if __name__ == "__main__":
    main()
