"""Datasets: the synthetic generator, the decode-once cache, CIFAR layouts and clear errors."""
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from interpbench.data import DATASETS, load_dataset
from interpbench.data.base import DatasetNotFoundError
from interpbench.data.synthetic import CLASSES, generate


def test_synthetic_is_deterministic_balanced_and_masked():
    a, b = generate(200, seed=3), generate(200, seed=3)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(generate(200, seed=4)["images"], a["images"])
    assert a["images"].shape == (200, 3, 32, 32) and a["images"].dtype == torch.uint8
    assert torch.bincount(a["labels"], minlength=10).tolist() == [20] * 10
    area = a["masks"].float().mean(dim=(1, 2))
    assert (area > 0.02).all() and (area < 0.5).all()  # every image holds an object, none fills it


def test_objects_differ_from_their_background():
    data = generate(100, seed=0)
    x, masks = data["images"].float() / 255, data["masks"].unsqueeze(1)
    inside = (x * masks).sum(dim=(2, 3)) / masks.sum(dim=(2, 3))
    outside = (x * ~masks).sum(dim=(2, 3)) / (~masks).sum(dim=(2, 3))
    assert ((inside - outside).abs().max(dim=1).values > 0.15).float().mean() > 0.9


def test_synthetic_dataset_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path))
    first = load_dataset({"name": "synthetic", "num_train": 100, "num_test": 50})
    files = sorted((tmp_path / "data").rglob("*.npy"))
    stamps = [f.stat().st_mtime_ns for f in files]
    second = load_dataset({"name": "synthetic", "num_train": 100, "num_test": 50})
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing decoded or written again
    assert torch.equal(first.train.images, second.train.images)
    assert first.classes == CLASSES and first.num_classes == 10 and first.input_size == (3, 32, 32)
    assert len(first.train) == 100 and len(first.test) == 50 and first.test.masks.shape == (50, 32, 32)
    assert all(0.3 < m < 0.7 for m in first.mean) and all(0.1 < s < 0.4 for s in first.std)


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=3, size=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., 0] = 40 * index + k  # a known value to check the decoding order
                Image.fromarray(pixels).save(folder / f"{k:04d}.png")


def test_cifar_loader_reads_an_image_folder_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    write_image_folder(tmp_path / "cifar")
    dataset = DATASETS.create("cifar10", root=str(tmp_path / "cifar"), download=False)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert dataset.train.images[:, 0, 0, 0].tolist() == [0, 1, 2, 40, 41, 42]
    assert dataset.train.images.shape == (6, 3, 8, 8) and dataset.augment == "crop_flip"


def test_cifar_loader_reads_torchvision_layout(tmp_path, monkeypatch):
    """torchvision's pickled batches; its md5 check is bypassed because these are not the real files."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "tv" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [name for name, _ in CIFAR10.train_list] + [name for name, _ in CIFAR10.test_list]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        data[:, 0] = k  # first red pixel marks the batch
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": [k % 10] * 4}, handle)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": classes}, handle)
    dataset = DATASETS.create("cifar10", root=str(tmp_path / "tv"), download=False)
    assert len(dataset.train) == 20 and len(dataset.test) == 4 and dataset.classes == classes
    assert dataset.train.images[:, 0, 0, 0].tolist() == [k for k in range(5) for _ in range(4)]
    assert dataset.test.images[:, 0, 0, 0].tolist() == [5] * 4


def test_missing_cifar_offline_is_one_line_naming_paths_and_synthetic(tmp_path, monkeypatch):
    import interpbench.data.cifar as cifar

    def offline(name, root, download=False):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "_from_torchvision", offline)
    with pytest.raises(DatasetNotFoundError) as error:
        DATASETS.create("cifar10", root=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message and "data=synthetic" in message
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert str(tmp_path / "nowhere" / "train") in message and "download" in message
    with pytest.raises(DatasetNotFoundError, match="downloads are off"):
        DATASETS.create("cifar10", root=str(tmp_path / "nowhere"), download=False)


def test_imagefolder_needs_a_root_with_train_and_val(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs data.root"):
        DATASETS.create("imagefolder")
    with pytest.raises(DatasetNotFoundError, match="tried"):
        DATASETS.create("imagefolder", root=str(tmp_path))


def test_imagefolder_resizes_and_centre_crops(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    write_image_folder(tmp_path / "folder", size=12)
    (tmp_path / "folder" / "test").rename(tmp_path / "folder" / "val")
    dataset = DATASETS.create("imagefolder", root=str(tmp_path / "folder"), image_size=6)
    assert dataset.train.images.shape == (6, 3, 6, 6) and dataset.classes == ["cat", "dog"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").exists(), reason="shared CIFAR-10 archive not present")
def test_real_cifar10_from_the_shared_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as archive:
        archive.extractall(tmp_path / "cifar10", filter="data")
    roots = [p.parent for p in (tmp_path / "cifar10").rglob("train") if p.is_dir()]
    dataset = DATASETS.create("cifar10", root=str(roots[0]), download=False)
    assert len(dataset.train) == 50000 and len(dataset.test) == 10000
    assert dataset.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(dataset.test.labels).tolist() == [1000] * 10
    # CIFAR-10's published channel means, to JPEG re-encoding precision.
    assert np.allclose(dataset.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
