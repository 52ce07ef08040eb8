"""A store that checks itself: every artifact is verified when it is read, and a corrupt one is moved
to ``<store>/quarantine/`` (named on stderr) so that the run that found it computes it again.

What is checked, and against what:

- a cell result (``cells/*.json``): parsed and checked against its schema
  (:meth:`interpbench.core.CellResult.from_json`); its ``key`` must be the one in its file name (and
  the cell's, when the caller knows the cell);
- a trained model (``models/<model>-<key>/``): ``record.json`` against :data:`RECORD_FIELDS` and the
  folder's key, ``model.pt`` against the sha256 that ``record.json`` holds (``model_sha256``; a record
  written before it had one: ``model.pt`` must load);
- ``last.pt`` (the checkpoint an interrupted training resumes from) and the saliency caches
  (``saliency/*.pt``): size and sha256 against a sidecar manifest ``<file>.sha256.json``
  (``{"file": name, "size": bytes, "sha256": hex}``) written atomically after the file; without a
  sidecar (a crash between the two writes, or a file from before manifests) the file must load;
- decoded arrays (``data/<name>-<key>/*.npy``): size and sha256 against the manifest under
  ``"arrays"`` in the folder's ``meta.json`` (written last, atomically); a ``meta.json`` from before
  manifests: each array's header must match its length.

The verified readers return ``None`` for an artifact that is absent or was corrupt (then quarantined),
so that the caller computes it; :func:`verify_store` checks a whole store (``interpbench status --verify``).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from interpbench.core import RecordError, field_problem, read_cell_result
from interpbench.storage import atomic_write_json, read_json

QUARANTINE = "quarantine"
SIDECAR_SUFFIX = ".sha256.json"
# record.json: field -> the types its value may have; every required field must be there
RECORD_FIELDS: Dict[str, Tuple[type, ...]] = {
    "model": (str,), "key": (str,), "spec": (dict,), "config": (dict,), "test_accuracy": (float, int),
    "history": (list,), "train_seconds": (float, int), "finished": (bool,),
}
# optional fields of record.json (older records lack some), checked when present
RECORD_OPTIONAL_FIELDS: Dict[str, Tuple[type, ...]] = {
    "test_images": (int,), "train_images": (int,), "device": (str,), "parameters": (int,),
    "trained_parameters": (int,), "resumed_at_epochs": (list,), "model_sha256": (str,), "weights": (dict,),
    "load_seconds": (float, int),
}
MODEL_FILES = ("record.json", "model.pt")  # a finished model's files (last.pt is checked on its own)
REQUIRED_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")

_recorded: Optional[List[Tuple[Path, str]]] = None  # set by recording(): what quarantine() moved


# --- hashing and manifests -----------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> Dict[str, Any]:
    """The manifest entry of ``path``: its size in bytes and its sha256."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def entry_problem(path: Path, entry: Any) -> Optional[str]:
    """What is wrong with ``path`` against its manifest entry (missing, size, sha256), or ``None``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) \
            or not isinstance(entry.get("sha256"), str):
        return "manifest entry is not {size, sha256}"
    if not Path(path).exists():
        return "missing"
    size = os.path.getsize(path)
    if size != entry["size"]:
        return f"size {size} bytes, manifest says {entry['size']}"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from the manifest's"
    return None


def sidecar_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path) -> Path:
    """Write ``<path>.sha256.json`` (``{"file", "size", "sha256"}``) atomically; call it after ``path``."""
    path = Path(path)
    return atomic_write_json(sidecar_path(path), {"file": path.name, **file_entry(path)})


def remove_with_sidecar(path: Path) -> None:
    for target in (Path(path), sidecar_path(path)):
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass


# --- quarantine ----------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def quarantine(path: Path, store: Path, reason: str) -> Optional[Path]:
    """Move ``path`` (and its sidecar manifest, if any) to ``<store>/quarantine/<path relative to the
    store>.<UTC timestamp>`` and print ``quarantined <path>: <reason>`` to stderr; returns where it
    went (``None``: another process moved it first). A folder: each of its files (a model folder's
    ``train.lock`` stays)."""
    path, store = Path(path), Path(store)
    if path.is_dir():
        moved = [quarantine(child, store, reason) for child in sorted(path.iterdir())
                 if child.is_file() and child.name != "train.lock" and not child.name.endswith(SIDECAR_SUFFIX)]
        return path if any(moved) else None
    try:
        relative = path.resolve().relative_to(store.resolve())
    except ValueError:  # not under the store: keep its name only
        relative = Path("elsewhere") / path.name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = store / QUARANTINE / f"{relative}.{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, target)
    except FileNotFoundError:  # quarantined (or rewritten) by another process meanwhile
        return None
    sidecar = sidecar_path(path)
    if sidecar.exists():
        try:
            os.replace(sidecar, sidecar_path(target))
        except FileNotFoundError:
            pass
    reason = _one_line(reason)
    print(f"quarantined {path}: {reason}", file=sys.stderr, flush=True)
    if _recorded is not None:
        _recorded.append((path, reason))
    return target


@contextmanager
def recording() -> Iterator[List[Tuple[Path, str]]]:
    """Collect ``(path, reason)`` of every file :func:`quarantine` moves in the block (this process)."""
    global _recorded
    saved, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = saved


def _error_text(error: BaseException) -> str:
    text = _one_line(str(error))[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- verified readers ----------------------------------------------------------------------------

def load_verified(path: Path, store: Path, load: Callable[[Path], Any]) -> Optional[Any]:
    """``load(path)`` after checking ``path`` against its sidecar manifest; ``None`` when there is no
    file, or when it is corrupt (it is then quarantined). Without a sidecar, loading is the check."""
    path = Path(path)
    if not path.exists():
        return None
    sidecar = sidecar_path(path)
    problem = None
    if sidecar.exists():
        try:
            problem = entry_problem(path, read_json(sidecar))
        except (OSError, ValueError) as error:
            problem = f"unreadable manifest {sidecar.name} ({_error_text(error)})"
    if problem is None:
        try:
            return load(path)
        except FileNotFoundError:  # quarantined by another process meanwhile
            return None
        except Exception as error:  # a truncated or garbled file: whatever the loader raises
            problem = f"does not load ({_error_text(error)})"
    quarantine(path, store, problem)
    return None


def torch_file(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def read_cell(path: Path, store: Path, key: Optional[str] = None) -> "Optional[Any]":
    """The :class:`CellResult` stored at ``path`` if it fits its schema and its key is the one its file
    name (and ``key``, when given) says; ``None`` when absent or corrupt (then quarantined)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        result = read_cell_result(path)
    except FileNotFoundError:
        return None
    except (RecordError, OSError) as error:
        problem = str(error)
        prefix = f"{path}: "
        problem = problem[len(prefix):] if problem.startswith(prefix) else problem
    else:
        expected = key if key is not None else path.stem.rsplit("-", 1)[-1]
        if result.key == expected and path.stem.endswith("-" + result.key):
            return result
        problem = f"holds the result of cell {result.key}, not of {expected}"
    quarantine(path, store, problem)
    return None


def cell_result(cell: Any, store: Path) -> "Optional[Any]":
    """The verified result of ``cell`` in ``store``, or ``None`` (absent, or corrupt and quarantined)."""
    return read_cell(cell.path(store), store, key=cell.key())


def cell_done(cell: Any, store: Path) -> bool:
    return cell_result(cell, store) is not None


def record_problem(record: Any, folder: Path) -> Optional[str]:
    """What is wrong with a parsed ``record.json`` of the model folder ``folder``, or ``None``."""
    problem = field_problem(record, RECORD_FIELDS, RECORD_OPTIONAL_FIELDS, allow_unknown=True)
    if problem:
        return problem
    if not record["finished"]:
        return "finished is false"
    if Path(folder).name != f"{record['model']}-{record['key']}":
        return f"is the record of {record['model']}-{record['key']}, not of {Path(folder).name}"
    return None


def _model_problem(folder: Path) -> Tuple[Optional[Dict[str, Any]], Optional[Path], Optional[str]]:
    """``(record, None, None)`` for a sound model folder, else ``(None, the bad file, the problem)``."""
    record_path, model_path = folder / "record.json", folder / "model.pt"
    try:
        record = read_json(record_path)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, record_path, f"not valid JSON ({_error_text(error)})"
    problem = record_problem(record, folder)
    if problem:
        return None, record_path, problem
    if not model_path.exists():
        return None, model_path, "missing, although record.json marks the training finished"
    if "model_sha256" in record:
        if sha256_file(model_path) != record["model_sha256"]:
            return None, model_path, "sha256 differs from record.json's model_sha256"
    else:  # a record from before checksums: the checkpoint must load
        try:
            state = torch_file(model_path)
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("no 'model' state in it")
        except Exception as error:
            return None, model_path, f"does not load ({_error_text(error)})"
    return record, None, None


def trained_record(folder: Path, store: Path) -> Optional[Dict[str, Any]]:
    """The verified ``record.json`` of a model folder (``model.pt`` checked against its sha256);
    ``None`` when untrained, or when corrupt: then the folder's files go to quarantine."""
    folder = Path(folder)
    if not (folder / "record.json").exists():
        return None
    try:
        record, bad, problem = _model_problem(folder)
    except FileNotFoundError:  # quarantined by another process meanwhile
        return None
    if record is not None:
        return record
    reason = f"{bad.name}: {problem}" if bad is not None else str(problem)
    for name in MODEL_FILES:
        if (folder / name).exists():
            quarantine(folder / name, store, reason)
    return None


def model_trained(spec: Any, store: Path) -> bool:
    """Whether ``spec`` has a sound checkpoint in ``store`` (a corrupt one is quarantined)."""
    return trained_record(spec.folder(store), store) is not None


def data_cache_meta(folder: Path, store: Path) -> Optional[Dict[str, Any]]:
    """The ``meta.json`` of a decoded-array cache folder if it and its arrays are sound; ``None`` when
    there is none or something is wrong: a corrupt array (or ``meta.json``) is quarantined and the
    caller decodes again."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = read_json(meta_path)
        problem = None
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), list) for k in ("classes", "mean", "std")):
            problem = "not a cache record (classes, mean, std)"
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"not valid JSON ({_error_text(error)})"
    if problem:
        quarantine(meta_path, store, problem)
        return None
    arrays = meta.get("arrays")
    if arrays is not None and not isinstance(arrays, dict):
        quarantine(meta_path, store, "its arrays manifest is not an object")
        return None
    names = list(arrays) if arrays is not None else sorted(p.name for p in folder.glob("*.npy"))
    if any(f"{name}.npy" not in names for name in REQUIRED_ARRAYS):
        return None  # an array is gone (quarantined before): decode again
    for name in names:
        path = folder / name
        if arrays is not None:
            problem = entry_problem(path, arrays[name])
        else:  # a cache from before manifests: each array's header must match its length
            problem = _npy_problem(path)
        if problem == "missing":
            return None
        if problem:
            quarantine(path, store, problem)
            return None
    return meta


def _npy_problem(path: Path) -> Optional[str]:
    import numpy as np

    try:
        np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return "missing"
    except Exception as error:
        return f"does not load ({_error_text(error)})"
    return None


# --- the whole store -----------------------------------------------------------------------------

def verify_store(store: Path) -> Tuple[int, List[Tuple[Path, str]]]:
    """Check every cell, model folder, ``last.pt``, saliency cache and decoded-array cache of ``store``;
    quarantine what is corrupt. Returns ``(artifacts checked, [(path, reason) quarantined])``."""
    store = Path(store)
    checked = 0
    with recording() as moved:
        for path in sorted((store / "cells").glob("*.json")):
            checked += 1
            read_cell(path, store)
        for folder in sorted(p for p in (store / "models").glob("*") if p.is_dir()):
            if (folder / "record.json").exists():
                checked += 1
                trained_record(folder, store)
            if (folder / "last.pt").exists():
                checked += 1
                load_verified(folder / "last.pt", store, torch_file)
        for path in sorted((store / "saliency").glob("*.pt")):
            checked += 1
            load_verified(path, store, torch_file)
        for folder in sorted(p for p in (store / "data").glob("*") if p.is_dir()):
            if (folder / "meta.json").exists():
                checked += 1
                data_cache_meta(folder, store)
        return checked, list(moved)
