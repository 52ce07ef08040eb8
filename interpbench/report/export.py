"""Exported saliency maps: every cell's maps with the ids of the test images they explain, one
``.npz`` per cell, in the form other benchmarks publish theirs (``interpbench report <path>
--export-maps DIR``).

A cell's maps are the ones it was scored on: the cached maps of its explained group,
``<store>/saliency/<model>__<explainer>-<saliency key>.pt`` (``Cell.saliency_path``: a float32
tensor ``[N, H, W]``, the explainer's map of each scored image in the order of the scored images).
Cells that differ only in their metric share that file; the export still writes one file per cell,
named like the cell's result (``<store>/cells/<name>.json``):
``<DIR>/<model>__<explainer>__<metric>-<cell key>.npz``, because each cell carries its own metric,
metric arguments and per-image scores. The maps are therefore repeated once per metric of a group
(at 32 x 32 pixels, 500 images: 2 MB of float32, 1.6 to 1.9 MB compressed); ``meta["saliency_key"]``
says which files hold the same maps.

Format (version 1): a zip of ``.npy`` arrays, read with ``numpy.load(allow_pickle=False)``, written
atomically with fixed zip dates (the same stored results give the same bytes):

- ``saliency``: float32 ``[N, H, W]``, the stored maps exactly;
- ``image_ids``: int64 ``[N]``, the index of each map's image in the dataset's test split (the
  order in which the dataset's loader returns it: for CIFAR from torchvision's archive the order of
  its test batch, torchvision's ``CIFAR10(train=False)`` index; for an ImageFolder layout its sorted
  class folders, then its sorted file names; for ``synthetic`` the order of generation);
- ``targets``: int64 ``[N]``, the class each map explains. The saliency cache stores the maps only,
  not the classes, and recovering them would take the model (``target=predicted``, the default) or
  the dataset's labels (``target=label``), which a report never loads: every entry is ``-1``
  (unknown), ``meta["targets_known"]`` is false and ``meta["target"]`` names the rule (with
  ``image_ids`` and the dataset, ``label`` targets are the test labels at those ids);
- ``scores``: float64 ``[N]``, the cell's per-image scores (NaN where the metric is undefined);
- ``meta``: a 0-d unicode array holding a JSON object: ``format`` (``interpbench.saliency_maps``),
  ``version``, ``cell_key``, ``saliency_key``, ``saliency_sha256`` (of the stored ``.pt``),
  ``model``, ``model_key``, ``seed``, ``size``, ``data`` (the dataset's arguments), ``explainer``,
  ``explainer_args``, ``explainer_label``, ``metric``, ``metric_args``, ``metric_label``,
  ``higher_is_better``, ``score``, ``num_images`` (asked for), ``images`` (N), ``test_images`` (the
  size of the test split), ``eval_seed``, ``target``, ``targets_known``, ``image_ids_rule``,
  ``git_commit`` and ``torch`` (those the cell was computed with).

The image ids are computed, not read: the evaluation picks ``min(num_images, test_images)`` of a
permutation of the test split drawn by ``torch.randperm`` with a generator seeded with
``eval_seed``, in index order (``interpbench.core.evaluation_indices``, the function the evaluation
itself calls). That needs the size of the test split only, which the model's record holds
(``<store>/models/<model>-<model key>/record.json``, ``test_images``), so no dataset is loaded.
Nothing here imports a model, a dataset or an explainer; the maps are read with
``torch.load(weights_only=True)`` after checking them against their sidecar manifest.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from interpbench.core import DATA_KEYS_NOT_IN_IDENTITY, CellResult, evaluation_indices
from interpbench.integrity import entry_problem, sha256_file, sidecar_path
from interpbench.report.inputs import saliency_key
from interpbench.storage import atomic_write_bytes, read_json

FORMAT = "interpbench.saliency_maps"
VERSION = 1
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
UNKNOWN_TARGET = -1
IMAGE_IDS_RULE = ("the first min(num_images, test_images) of torch.randperm(test_images) drawn with "
                  "torch.Generator().manual_seed(eval_seed), sorted: indices into the test split")


class ExportError(ValueError):
    """Maps that cannot be exported; the message is one line naming the file and the remedy."""


def export_name(result: CellResult) -> str:
    """The file a cell's maps are exported to: its result's name (``<store>/cells/``) as ``.npz``."""
    return f"{result.model}__{result.explainer}__{result.metric}-{result.key}.npz"


def saliency_file(result: CellResult, store: Path) -> Path:
    """Where ``store`` keeps the maps ``result`` was scored on (``Cell.saliency_path``, from the cell's
    stored identity, so that no registry is asked)."""
    return Path(store) / "saliency" / f"{result.model}__{result.explainer}-{saliency_key(result.cell)}.pt"


def evaluation_ids(test_images: int, num_images: int, eval_seed: int) -> np.ndarray:
    """The test-split indices a cell scores (int64, ascending), by the evaluation's own rule
    (:func:`interpbench.core.evaluation_indices`), without loading the dataset."""
    return evaluation_indices(test_images, num_images, eval_seed).numpy().astype(np.int64)


def _remedy(store: Path) -> str:
    return f"pass --store with the store that computed these cells (looked in {store})"


def _load_maps(path: Path, store: Path) -> Dict[str, Any]:
    """The stored maps at ``path`` as float32 ``[N, H, W]`` and the file's sha256, checked against its
    sidecar manifest (a corrupt cache is named, never moved: the export changes nothing in the store)."""
    import torch

    if not path.exists():
        raise ExportError(f"{path}: no stored saliency maps; {_remedy(store)}")
    digest = sha256_file(path)
    sidecar = sidecar_path(path)
    if sidecar.exists():
        try:
            problem = entry_problem(path, read_json(sidecar))
        except (OSError, ValueError) as error:
            problem = f"unreadable manifest {sidecar.name} ({type(error).__name__})"
        if problem:
            raise ExportError(f"{path}: {problem}; `interpbench status --verify store={store}` quarantines it "
                              "and the sweep computes it again")
    try:
        maps = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or garbled file: whatever the loader raises
        raise ExportError(f"{path}: does not load ({type(error).__name__}); `interpbench status --verify "
                          f"store={store}` quarantines it and the sweep computes it again") from None
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or not maps.is_floating_point():
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ExportError(f"{path}: not a float tensor [N, H, W] of maps (found {shape})")
    return {"saliency": maps.detach().float().numpy(), "sha256": digest}


def _test_images(result: CellResult, store: Path, count: int) -> int:
    """The size of the test split the cell's images were drawn from: the model record's
    ``test_images``; without it, ``count`` when fewer maps than asked for (the whole split was scored)."""
    record_path = Path(store) / "models" / f"{result.model}-{result.model_key}" / "record.json"
    record = read_json(record_path) if record_path.exists() else {}
    size = record.get("test_images") if isinstance(record, dict) else None
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    if count < int(result.cell.get("num_images", count)):
        return count
    why = "has no test_images" if record_path.exists() else "is missing"
    raise ExportError(f"{record_path}: the model's record {why}, and it gives the size of the test split "
                      f"that fixes the image ids; {_remedy(store)}")


def _npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            item = io.BytesIO()
            array = np.asarray(array)  # (ascontiguousarray would turn the 0-d meta into [1])
            np.lib.format.write_array(item, array if array.flags.c_contiguous else np.ascontiguousarray(array),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, item.getvalue())
    return buffer.getvalue()


def cell_arrays(result: CellResult, store: Path, maps: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """The arrays of ``result``'s export file (see the module's docstring). ``maps``: the group's
    loaded maps, when the caller has them."""
    path = saliency_file(result, store)
    maps = _load_maps(path, Path(store)) if maps is None else maps
    saliency = maps["saliency"]
    count = int(saliency.shape[0])
    if count != result.num_images:
        raise ExportError(f"{path}: {count} maps, but cell {result.key} scored {result.num_images} images")
    cell = result.cell
    requested, eval_seed = int(cell.get("num_images", count)), int(cell.get("eval_seed", 0))
    test_images = _test_images(result, Path(store), count)
    ids = evaluation_ids(test_images, requested, eval_seed)
    if ids.shape[0] != count:
        raise ExportError(f"{path}: {count} maps, but {requested} of {test_images} test images give "
                          f"{ids.shape[0]} image ids")
    data = {k: v for k, v in (result.train.get("data") or {}).items() if k not in DATA_KEYS_NOT_IN_IDENTITY}
    meta = {
        "format": FORMAT, "version": VERSION, "cell_key": result.key, "saliency_key": saliency_key(cell),
        "saliency_sha256": maps["sha256"], "model": result.model, "model_key": result.model_key,
        "seed": result.seed, "size": result.size, "data": data, "explainer": result.explainer,
        "explainer_args": result.explainer_args, "explainer_label": result.explainer_label,
        "metric": result.metric, "metric_args": result.metric_args, "metric_label": result.label,
        "higher_is_better": result.higher_is_better,
        "score": None if result.score is None or not math.isfinite(result.score) else result.score,
        "num_images": requested, "images": count, "test_images": test_images, "eval_seed": eval_seed,
        "target": result.target, "targets_known": False, "image_ids_rule": IMAGE_IDS_RULE,
        "git_commit": result.git_commit, "torch": result.torch,
    }
    return {
        "saliency": saliency.astype(np.float32, copy=False),
        "image_ids": ids,
        "targets": np.full(count, UNKNOWN_TARGET, dtype=np.int64),
        "scores": np.array([np.nan if v is None else v for v in result.per_image], dtype=np.float64),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def map_contents(cells: Sequence[CellResult], store: Path) -> Dict[str, bytes]:
    """File name -> the ``.npz`` bytes of each cell; every cell's maps read and checked."""
    loaded: Dict[Path, Dict[str, Any]] = {}  # cells of one group share their maps: read once
    contents: Dict[str, bytes] = {}
    for result in cells:
        path = saliency_file(result, store)
        if path not in loaded:
            loaded[path] = _load_maps(path, Path(store))
        contents[export_name(result)] = _npz_bytes(cell_arrays(result, store, loaded[path]))
    return contents


def export_maps(cells: Sequence[CellResult], store: Path, out_dir: Path) -> List[Path]:
    """Write one ``<out_dir>/<model>__<explainer>__<metric>-<cell key>.npz`` per cell result (the
    format of the module's docstring), reading the maps from ``store``; returns the paths written, in
    the cells' order. Every cell's maps are read and checked before the first file is written, so a
    missing or corrupt one (:class:`ExportError`, one line naming the file) leaves ``out_dir`` as it was."""
    contents = map_contents(cells, Path(store))
    return [atomic_write_bytes(Path(out_dir) / name, data) for name, data in contents.items()]
