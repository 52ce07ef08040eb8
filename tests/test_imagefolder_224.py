"""ImageFolder data at ImageNet resolution: 8-bit RGB from any pixel format, hidden folders, the
evaluation split, a cache key that sees replaced files, and arrays shared as read-only memory maps."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from interpbench.data import DATASETS
from interpbench.data.base import DatasetNotFoundError, ImageFolderError, channel_stats, load_array
from interpbench.data.imagefolder import IMAGENET_MEAN
from interpbench.images import to_float

SIZE = 224


def save_rgb(path: Path, red: int, green: int = 50, blue: int = 100, size: int = SIZE) -> None:
    """A flat 8-bit RGB PNG (flat, so resizing keeps its colour exactly)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), (red, green, blue), dtype=np.uint8)).save(path)


def write_tree(root: Path, splits=("train", "val"), classes=("cat", "dog"), per_class=2) -> Path:
    """``root/<split>/<class>/NN.png``; the red value marks the split (train 10, val 20, test 30),
    the class (+100 for the second) and the image (+k)."""
    marks = {"train": 10, "val": 20, "test": 30}
    for split in splits:
        for index, name in enumerate(classes):
            for k in range(per_class):
                save_rgb(root / split / name / f"{k:02d}.png", marks[split] + 100 * index + k)
    return root


def load(root: Path, **kwargs):
    return DATASETS.create("imagefolder", root=str(root), image_size=SIZE, **kwargs)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- pixel formats --------------------------------------------------------------------------------

def test_16_bit_grayscale_png_decodes_to_value_over_257(tmp_path):
    from PIL import Image

    root = write_tree(tmp_path / "tree")
    gray = np.zeros((SIZE, SIZE), dtype=np.uint16)
    values = np.array([0, 128, 129, 257, 4095, 257 * 100, 32768, 65535], dtype=np.uint16)
    gray[:, : len(values)] = values  # the first columns hold the test values, the rest is 0
    gray[:, len(values):] = 257 * 200
    path = root / "train" / "cat" / "00.png"
    Image.fromarray(gray).save(path)
    assert Image.open(path).mode == "I;16"  # a real 16-bit PNG, which Pillow's RGB conversion clips to 255

    image = load(root).train.images[0]
    assert image.shape == (3, SIZE, SIZE)
    expected = [0, 0, 1, 1, 16, 100, 128, 255]  # round(v / 257)
    for channel in range(3):
        assert image[channel, 0, : len(values)].tolist() == expected
        assert int(image[channel, 5, 100]) == 200


def test_transparency_is_composited_over_white_and_float_scaled(tmp_path):
    from PIL import Image

    root = write_tree(tmp_path / "tree")
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[...] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[:, : SIZE // 2] = (0, 0, 255, 255)  # opaque blue on the left half
    Image.fromarray(rgba, mode="RGBA").save(root / "train" / "cat" / "00.png")
    Image.fromarray(np.full((SIZE, SIZE), 0.5, dtype=np.float32)).save(root / "train" / "cat" / "02.tiff")
    images = load(root).train.images
    assert images[0, :, 0, 0].tolist() == [0, 0, 255]
    assert images[0, :, 0, SIZE - 1].tolist() == [255, 255, 255]
    assert images[2, :, 7, 7].tolist() == [128, 128, 128]  # 0.5 * 255, rounded


def test_an_out_of_range_integer_image_is_refused_on_one_line(tmp_path):
    from PIL import Image

    root = write_tree(tmp_path / "tree")
    bad = root / "val" / "dog" / "01.tiff"
    Image.fromarray(np.full((SIZE, SIZE), 70000, dtype=np.int32)).save(bad)
    with pytest.raises(ImageFolderError) as error:
        load(root)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot decode {bad} (32-bit integer image")
    assert "70000" in message


def test_resize_short_side_then_centre_crop(tmp_path):
    """A 448x224 image (left quarter red, middle half green, right quarter blue) keeps its middle
    half; a 300x600 portrait (a grey central 300x300 square, black above and below it) keeps the
    grey square."""
    from PIL import Image

    root = write_tree(tmp_path / "tree")
    wide = np.zeros((224, 448, 3), dtype=np.uint8)
    wide[:, :112] = (255, 0, 0)
    wide[:, 112:336] = (0, 255, 0)
    wide[:, 336:] = (0, 0, 255)
    Image.fromarray(wide).save(root / "train" / "cat" / "00.png")
    tall = np.zeros((600, 300, 3), dtype=np.uint8)
    tall[150:450] = (200, 200, 200)  # the central 300x300 square
    Image.fromarray(tall).save(root / "train" / "cat" / "01.png")
    images = load(root).train.images
    assert images.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(images[0, 1], torch.full((SIZE, SIZE), 255, dtype=torch.uint8))
    assert int(images[0, 0].max()) == 0 and int(images[0, 2].max()) == 0
    # 300 -> 224 scales the 600-pixel side to 448 and the square to rows 112 to 335: the crop; only
    # its first and last rows blend (equally) with the black outside it
    assert torch.equal(images[1, :, 1:-1], torch.full((3, SIZE - 2, SIZE), 200, dtype=torch.uint8))
    assert torch.equal(images[1, :, 0], images[1, :, -1]) and 150 < int(images[1, 0, 0, 0]) < 200


# --- hidden files, evaluation split ---------------------------------------------------------------

def test_hidden_folders_and_files_are_ignored_everywhere(tmp_path, home):
    root = write_tree(tmp_path / "tree")
    save_rgb(root / "train" / ".ipynb_checkpoints" / "00-checkpoint.png", 1)  # only in train/
    save_rgb(root / "train" / "cat" / ".ipynb_checkpoints" / "00-checkpoint.png", 2)
    save_rgb(root / "val" / "dog" / ".hidden" / "x.png", 3)
    save_rgb(root / ".ipynb_checkpoints" / "cat" / "y.png", 4)
    (root / "val" / "cat" / "._00.png").write_bytes(b"resource fork")
    (root / "train" / ".DS_Store").write_bytes(b"\x00")
    dataset = load(root)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.train.images[:, 0, 0, 0].tolist() == [10, 11, 110, 111]
    assert dataset.test.images[:, 0, 0, 0].tolist() == [20, 21, 120, 121]
    assert dataset.mean == IMAGENET_MEAN

    # a new hidden file changes nothing: same cache key, nothing decoded again
    arrays = sorted((home / "data").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in arrays]
    save_rgb(root / "val" / ".ipynb_checkpoints" / "z.png", 5)
    load(root)
    assert sorted((home / "data").rglob("*.npy")) == arrays
    assert [p.stat().st_mtime_ns for p in arrays] == stamps


def test_both_val_and_test_need_eval_split(tmp_path):
    root = write_tree(tmp_path / "tree", splits=("train", "val", "test"))
    with pytest.raises(ImageFolderError) as error:
        load(root)
    message = str(error.value)
    assert message == (f"{root} holds both val/ and test/; choose the split models are evaluated on "
                       "with data.eval_split=val or data.eval_split=test")
    assert load(root, eval_split="test").test.images[:, 0, 0, 0].tolist() == [30, 31, 130, 131]
    assert load(root, eval_split="val").test.images[:, 0, 0, 0].tolist() == [20, 21, 120, 121]
    with pytest.raises(ImageFolderError, match=r"^data.eval_split must be val or test \(or unset\), got 'dev'$"):
        load(root, eval_split="dev")


def test_eval_split_names_a_missing_folder_on_one_line(tmp_path):
    root = write_tree(tmp_path / "tree")  # train/ and val/ only
    assert load(root).test.images[:, 0, 0, 0].tolist() == [20, 21, 120, 121]
    with pytest.raises(DatasetNotFoundError) as error:
        load(root, eval_split="test")
    assert str(error.value) == (f"data.eval_split=test, but {root / 'test'} is not a folder; {root} holds val/ "
                                "(set data.eval_split=val or leave it unset)")


def test_the_config_accepts_eval_split():
    from interpbench.config import DATA_COUNTS, ConfigError, check_arguments

    check_arguments("data", {"root": "x", "eval_split": "test", "image_size": 224}, DATASETS, "imagefolder",
                    counts=DATA_COUNTS)
    with pytest.raises(ConfigError, match="eval_split"):
        check_arguments("data", {"eval_splt": "test"}, DATASETS, "imagefolder", counts=DATA_COUNTS)


# --- the cache ------------------------------------------------------------------------------------

def test_a_replaced_image_with_the_same_count_is_decoded_again(tmp_path, home):
    root = write_tree(tmp_path / "tree")
    first = load(root)
    assert first.train.images[1, 0, 0, 0] == 11
    target = root / "train" / "cat" / "01.png"
    before = target.stat()
    save_rgb(target, 77)
    after = target.stat()
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        # rewritten within the file system's timestamp resolution: as a later copy would be
        os.utime(target, ns=(after.st_atime_ns, after.st_mtime_ns + 1_000_000_000))
    second = load(root)
    assert second.train.images[:, 0, 0, 0].tolist() == [10, 77, 110, 111]
    folders = sorted(p.name for p in (home / "data").iterdir())
    assert len(folders) == 2 and second.identity != first.identity  # a second cache, under a new key
    # unchanged files: the same key, read from the cache
    assert load(root).identity == second.identity and len(list((home / "data").iterdir())) == 2


def test_the_key_covers_each_file_and_the_decoder(tmp_path):
    from interpbench.data.folders import DECODER_VERSION, folder_fingerprint

    root = write_tree(tmp_path / "tree")
    key = folder_fingerprint({"train": root / "train"})
    assert key["decoder"] == DECODER_VERSION and key["train"]["files"] == 4
    (root / "train" / "dog" / "01.png").rename(root / "train" / "dog" / "02.png")  # same count, same sizes
    renamed = folder_fingerprint({"train": root / "train"})
    assert renamed["train"]["files"] == 4 and renamed["train"]["sha256"] != key["train"]["sha256"]


# --- shared, read-only memory maps ----------------------------------------------------------------

def mapping_of(pointer: int) -> str:
    """The file that the memory at ``pointer`` maps in this process (``/proc/self/maps``), or ''."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= pointer < end:
            return fields[5] if len(fields) == 6 else ""
    return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_images_are_read_only_memory_maps_and_batches_work(tmp_path, home):
    from interpbench.engine.train import random_crop_flip

    root = write_tree(tmp_path / "tree", per_class=3)
    dataset = load(root)
    (folder,) = (home / "data").iterdir()
    array = load_array(folder / "train_images.npy")
    assert isinstance(array, np.memmap) and not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0, 0, 0] = 1

    # the tensors lie in the mapped files: no copy of the data in this process
    assert mapping_of(dataset.train.images.data_ptr()) == str(folder / "train_images.npy")
    assert mapping_of(dataset.test.images.data_ptr()) == str(folder / "test_images.npy")

    # training-style access: shuffled batches, converted and augmented; the mapped data is unchanged
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))
    seen = []
    for start in range(0, len(order), 4):
        x = random_crop_flip(to_float(dataset.train.images[order[start : start + 4]]),
                             torch.Generator().manual_seed(start))
        x = (x - torch.tensor(dataset.mean).view(1, 3, 1, 1)) / torch.tensor(dataset.std).view(1, 3, 1, 1)
        seen.append(x.shape[0])
    assert sum(seen) == 6
    assert dataset.train.images[:, 0, 0, 0].tolist() == [10, 11, 12, 110, 111, 112]
    subset = dataset.test.subset(torch.tensor([4, 0]))  # an evaluation subset: a copy of its rows
    assert subset.images[:, 0, 0, 0].tolist() == [121, 20] and subset.labels.tolist() == [1, 0]
    assert mapping_of(subset.images.data_ptr()) != str(folder / "test_images.npy")
    mean, _ = channel_stats(dataset.train.images, chunk_bytes=1)  # one image per chunk
    assert mean[1] == round(50 / 255, 4) and mean[2] == round(100 / 255, 4)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc")
def test_a_second_process_maps_the_cache_without_copying(tmp_path, home):
    root = write_tree(tmp_path / "tree", per_class=4)
    load(root)  # builds the cache here
    (folder,) = (home / "data").iterdir()
    code = textwrap.dedent(f"""
        import json, re, warnings
        from pathlib import Path
        warnings.simplefilter("error")  # torch's warning about non-writable arrays would fail here
        import torch
        from interpbench.data import DATASETS
        from interpbench.images import to_float

        dataset = DATASETS.create("imagefolder", root={str(root)!r}, image_size={SIZE})
        total = sum(float(to_float(dataset.train.images[s : s + 3]).sum()) for s in range(0, 8, 3))
        target = {str(folder / "train_images.npy")!r}
        found, fields = False, {{}}
        for line in Path("/proc/self/smaps").read_text().splitlines():
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                found = line.endswith(target)
            elif found and ":" in line:
                name, value = line.split(":", 1)
                if value.strip().endswith("kB"):
                    fields[name] = fields.get(name, 0) + int(value.split()[0])
        print(json.dumps({{"total": total, "fields": fields}}))
    """)
    env = {**os.environ, "INTERPBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    fields = report["fields"]
    size_kb = (folder / "train_images.npy").stat().st_size / 1024
    assert fields["Rss"] >= 0.9 * size_kb  # all of it read ...
    assert fields["Anonymous"] == 0 and fields["Private_Dirty"] == 0  # ... from the file, copied nowhere
    marks = [10, 11, 12, 13, 110, 111, 112, 113]
    expected = sum(SIZE * SIZE * (m + 50 + 100) / 255 for m in marks)
    assert report["total"] == pytest.approx(expected, rel=1e-5)


def test_concurrent_loads_decode_once(tmp_path, home, monkeypatch):
    """Two loaders at once (jobs started without the sweep): one decodes, the other waits on the
    cache folder's lock and reads what it wrote."""
    import threading
    import time

    import interpbench.data.imagefolder as imagefolder_module

    root = write_tree(tmp_path / "tree")
    calls = []
    decode = imagefolder_module.decode_split_folders

    def slow_decode(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return decode(*args, **kwargs)

    monkeypatch.setattr(imagefolder_module, "decode_split_folders", slow_decode)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load(root))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(calls) == 1 and len(results) == 2
    assert [r.train.images[:, 0, 0, 0].tolist() for r in results] == [[10, 11, 110, 111]] * 2


def test_decoding_in_chunks_keeps_the_order_and_names_a_size_mismatch(tmp_path):
    from interpbench.data.folders import decode_images

    paths = []
    for k in range(5):
        paths.append(tmp_path / f"{k}.png")
        save_rgb(paths[-1], 10 * k, size=8)
    images = decode_images(paths, chunk=2, workers=2)
    assert images.shape == (5, 3, 8, 8) and images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]
    save_rgb(paths[3], 0, size=9)
    with pytest.raises(ImageFolderError) as error:
        decode_images(paths, chunk=2)
    assert str(error.value) == (f"images differ in size: {paths[0]} is 8x8, {paths[3]} is 9x9; "
                                "set data.image_size to resize them")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_lazy_subset_gathers_only_the_batches_it_is_asked_for(tmp_path, home):
    root = write_tree(tmp_path / "tree", per_class=3)  # train red marks: 10, 11, 12, 110, 111, 112
    dataset = load(root)
    (folder,) = (home / "data").iterdir()
    lazy = dataset.train.lazy_subset(torch.tensor([5, 0, 3]))
    assert mapping_of(lazy.images.data.data_ptr()) == str(folder / "train_images.npy")  # nothing copied
    assert len(lazy) == 3 and lazy.images.shape == (3, 3, SIZE, SIZE) and lazy.masks is None
    assert lazy.labels.tolist() == [1, 0, 1]
    assert lazy.images[0:2][:, 0, 0, 0].tolist() == [112, 10]  # a slice, as a fitting loop reads
    assert lazy.images[torch.tensor([2, 0])][:, 0, 0, 0].tolist() == [110, 112]  # a shuffled batch
    assert int(lazy.images[1][0, 0, 0]) == 10
    assert to_float(lazy.images[0:3]).shape == (3, 3, SIZE, SIZE)
    assert lazy.subset(torch.tensor([1])).images[:, 0, 0, 0].tolist() == [10]
    mean, _ = channel_stats(lazy.images)
    assert mean[0] == round((112 + 10 + 110) / 3 / 255, 4)
