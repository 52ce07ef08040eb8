"""ImageFolder trees with problems: each fails with one clear line naming the file, folder or classes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interpbench.data import DATASETS
from interpbench.data.base import ImageFolderError

ROOT = Path(__file__).resolve().parents[1]


def write_tree(root: Path, train=("cat", "dog"), val=("cat", "dog"), per_class=3, size=8, suffix=".png"):
    """``root/train/<class>/*`` and ``root/val/<class>/*``: a few small random images per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}{suffix}")
    return root


def load(root: Path):
    return DATASETS.create("imagefolder", root=str(root), image_size=8)


def one_line_error(root: Path) -> str:
    with pytest.raises(ImageFolderError) as error:
        load(root)
    message = str(error.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400
    return message


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A work directory of the test's own, to see that a failed decode caches nothing."""
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_truncated_jpeg_names_the_file_and_the_decoder_message(tmp_path, home):
    root = write_tree(tmp_path / "tree", suffix=".jpg")
    broken = root / "train" / "dog" / "0001.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])
    message = one_line_error(root)
    assert message.startswith(f"cannot decode {broken} (")
    assert "truncated" in message.lower()
    assert not (home / "data").exists()  # nothing cached for a failed decode


def test_a_file_that_is_no_image_names_the_file(tmp_path):
    root = write_tree(tmp_path / "tree")
    bogus = root / "val" / "cat" / "notes.png"
    bogus.write_text("not an image\n")
    message = one_line_error(root)
    assert message.startswith(f"cannot decode {bogus} (") and "cannot identify image file" in message


def test_macos_resource_forks_and_hidden_files_are_skipped(tmp_path):
    root = write_tree(tmp_path / "tree")
    for folder in (root / "train" / "cat", root / "val" / "dog"):
        (folder / "._0000.png").write_bytes(b"\x00\x05\x16\x07 resource fork, no image")
        (folder / ".hidden.jpg").write_bytes(b"")
    dataset = load(root)
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset.train) == 6 and len(dataset.test) == 6
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_hidden_folders_are_never_classes(tmp_path):
    root = write_tree(tmp_path / "tree")
    write_tree(tmp_path / "checkpoints", train=("x",), val=("x",))  # images inside the hidden folder
    for split in ("train", "val"):
        (tmp_path / "checkpoints" / split / "x").rename(root / split / ".ipynb_checkpoints")
    (root / "train" / ".empty_hidden").mkdir()
    dataset = load(root)
    assert dataset.classes == ["cat", "dog"] and len(dataset.train) == 6 and len(dataset.test) == 6


def test_class_folders_that_differ_name_the_classes_and_folders(tmp_path):
    root = write_tree(tmp_path / "tree", train=("cat", "dog", "eel"), val=("cat", "dog", "fox", "gnu"))
    message = one_line_error(root)
    assert "only in train: eel;" in message and "only in val: fox, gnu" in message
    assert str(root / "train") in message and str(root / "val") in message


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = write_tree(tmp_path / "tree", train=("cat", "dog"), val=("cat", "dog"))
    empty = root / "val" / "dog"
    for path in empty.iterdir():
        path.unlink()
    (empty / "._0000.png").write_bytes(b"resource fork")  # hidden files do not count as images
    (empty / "readme.txt").write_text("no images here\n")
    message = one_line_error(root)
    assert message.startswith(f"class folder {empty} holds no images")


def test_the_sweep_reports_a_bad_tree_on_one_line_and_writes_nothing(tmp_path):
    root = write_tree(tmp_path / "tree", suffix=".jpg")
    broken = root / "val" / "cat" / "0002.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    env = {**os.environ, "INTERPBENCH_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "sweep.py"), "data=imagefolder", f"data.root={root}",
         "data.image_size=8", f"store={tmp_path / 'store'}", f"results_dir={tmp_path / 'results'}",
         "launcher=debug", "zoo=fa_cnn", "explainer=random", "progress=false"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot decode {broken} ("), result.stderr
    assert not (tmp_path / "results").exists()
    store = tmp_path / "store"
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_dir()]
    assert not (tmp_path / "home" / "data").exists()
