"""Models from outside the package: plugin files and installed packages' entry points.

A plugin is Python code that registers entries with the registries' decorators
(``@MODELS.register("my_net", recipe="resnet_standard")``), like a file in ``zoo/``:

- **files**: the config key ``plugins=[path/to/my_models.py, ...]``: each ``.py`` file is imported
  (as the module ``interpbench_plugin_<stem>_<hash of its path>``), so its decorators run;
- **entry points** of the group ``interpbench.plugins`` (:data:`ENTRY_POINT_GROUP`) of every
  installed distribution: each one is loaded; a module is imported, a callable (a function of no
  arguments) is imported and called.

:func:`load_plugins` loads both, each at most once per process, before the sweep's names are
resolved (:func:`interpbench.engine.plan.plan_sweep`, so ``sweep``, ``train`` and ``status``) and
again at the start of every job (:mod:`interpbench.engine.jobs`: launchers run jobs in other
processes, which get the files' absolute paths from :func:`plugin_files`). A file that is missing,
not ``.py``, or fails to import, and an entry point that fails to load, stop with one line naming it
and the error (:class:`PluginError`, a config error: exit status 2).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterable, List, Optional, Tuple

from interpbench.config import ConfigError

ENTRY_POINT_GROUP = "interpbench.plugins"

_files: Dict[str, ModuleType] = {}  # absolute path -> the module its import made (this process)
_entry_points: Dict[str, Any] = {}  # "name = value" -> what loading it returned (this process)


class PluginError(ConfigError):
    """A plugin file or entry point that cannot be loaded; the message is one line."""


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def plugin_files(files: Optional[Iterable[Any]]) -> Tuple[str, ...]:
    """The absolute paths of ``files`` (the config's ``plugins``; ``None``: none), in order, each once:
    what a job in another process or on another node is given to load."""
    paths = [str(Path(str(file)).expanduser().resolve()) for file in (files or [])]
    return tuple(dict.fromkeys(paths))


def module_name(path: Path) -> str:
    """The module name a plugin file is imported as: its stem and a hash of its absolute path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"interpbench_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def load_file(file: Any) -> ModuleType:
    """Import the plugin file ``file`` (once per process) and return its module."""
    path = Path(str(file)).expanduser().resolve()
    if str(path) in _files:
        return _files[str(path)]
    if not path.is_file():
        raise PluginError(f"plugins: {file}: no such file ({path})")
    if path.suffix != ".py":
        raise PluginError(f"plugins: {file} is not a .py file")
    name = module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugins: {file}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the plugin's own error, whatever it is, in one line with its line number
        del sys.modules[name]
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)]
        if isinstance(error, SyntaxError) and error.lineno is not None:
            lines.append(error.lineno)
        where = f", line {lines[-1]}" if lines else ""
        raise PluginError(f"plugins: {file}{where}: {_error_text(error)}") from None
    _files[str(path)] = module
    return module


def load_entry_points() -> List[str]:
    """Load every entry point of the group ``interpbench.plugins`` (each once per process): a module
    is imported, a callable is called with no arguments. Returns their names."""
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{entry.name} = {entry.value}"
        names.append(entry.name)
        if key in _entry_points:
            continue
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as error:
            dist = getattr(getattr(entry, "dist", None), "name", None)
            source = f", from {dist}" if dist else ""
            raise PluginError(f"entry point {key} (group {ENTRY_POINT_GROUP}{source}): {_error_text(error)}") from None
        _entry_points[key] = loaded
    return names


def load_plugins(files: Optional[Iterable[Any]] = None) -> Tuple[str, ...]:
    """Load the entry points of the group ``interpbench.plugins``, then the plugin ``files`` (the
    config's ``plugins``), each at most once per process; returns the files' absolute paths.
    Raises :class:`PluginError` (one line) for the first that fails."""
    files = [str(file) for file in (files or [])]
    load_entry_points()
    for file in files:
        load_file(file)
    return plugin_files(files)
