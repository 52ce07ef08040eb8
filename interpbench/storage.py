"""Where things are stored, how they are named, and how they are written.

Everything the harness computes (decoded datasets, checkpoints, saliency maps, cell results)
lives under one work directory, ``$INTERPBENCH_HOME`` (default ``~/.cache/interpbench``), outside
the repository. Every file is written atomically: to a temporary file in the same folder, then
renamed, so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

HOME_ENV = "INTERPBENCH_HOME"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def work_dir(override: Optional[str] = None) -> Path:
    """The work directory: ``override``, else ``$INTERPBENCH_HOME``, else ``~/.cache/interpbench``."""
    path = override or os.environ.get(HOME_ENV) or "~/.cache/interpbench"
    return Path(path).expanduser().resolve()


_store_in_use: Optional[Path] = None  # set by using_store(): where decoded data goes


def store_dir() -> Path:
    """The store in use (:func:`using_store`), else the work directory."""
    return _store_in_use or work_dir()


def data_dir() -> Path:
    """Where decoded datasets are cached: ``<store>/data`` of the store in use (:func:`using_store`),
    else ``<work directory>/data``."""
    return store_dir() / "data"


@contextmanager
def using_store(store: Optional[Path]) -> Iterator[None]:
    """Keep this process's decoded data in ``store`` (``<store>/data``) for the block; sweeps, training
    and status enter it with their ``store=``, and each job with its store, in whatever process it runs."""
    global _store_in_use
    saved = _store_in_use
    _store_in_use = None if store is None else Path(store).expanduser().resolve()
    try:
        yield
    finally:
        _store_in_use = saved


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it is process-wide, not thread-safe


def _atomic_write(path: Path, write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); results are shared on clusters, so give it the
        # mode open() would: 0666 less the umask
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_numpy_save(array: Any, path: Path) -> Path:
    import numpy as np

    return _atomic_write(path, lambda handle: np.save(handle, array))


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def git_commit(root: Optional[Path] = None) -> str:
    """The project's git commit (with ``-dirty`` for uncommitted changes outside ``results/``,
    where sweeps write their leaderboards), or ``unknown``. ``root``: the project by default."""
    root = PROJECT_ROOT if root is None else Path(root)
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
            text=True, timeout=5,
        )
        commit = answer.stdout.strip()
        if answer.returncode or not commit:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plain(obj: Any) -> Any:
    """Turn OmegaConf containers (and nested mappings) into plain Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
