"""One registry class for models, explainers, metrics and datasets.

A registry maps names to builder callables. Builders register with a decorator, are built with
``create(name, **kwargs)`` and listed with ``list(pattern)``. A duplicate or unknown name fails at
once, and an unknown name's error lists the close matches and the valid choices.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; its message is one line."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """Raised when a second builder tries to register under a taken name."""


class Registry:
    """A named collection of builders, e.g. ``MODELS`` or ``METRICS``.

    Each entry keeps the builder and free-form metadata (``tags``) given at registration.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., Any]] = {}
        self._info: Dict[str, Dict[str, Any]] = {}

    def register(self, name: Optional[str] = None, **info: Any) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("fa_cnn", family="fa_cnn")``.

        Without a name, the decorated function's or class's ``__name__`` is used.
        """

        def decorator(builder: T) -> T:
            key = name or builder.__name__
            if key in self._builders:
                raise DuplicateNameError(
                    f"{self.kind} '{key}' is already registered (by {self._builders[key].__module__})"
                )
            self._builders[key] = builder
            self._info[key] = dict(info)
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered under ``name``; unknown names raise ``UnknownNameError``."""
        self.check(name)
        return self._builders[name]

    def info(self, name: str) -> Dict[str, Any]:
        """The metadata given at registration."""
        self.check(name)
        return dict(self._info[name])

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the entry ``name`` with ``kwargs``; an argument it does not take is a one-line error."""
        builder = self.get(name)
        params = inspect.signature(builder).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not takes_any:
            valid = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL]
            raise TypeError(
                f"{self.kind} '{name}' takes no argument {', '.join(map(repr, unknown))}; "
                f"valid arguments: {', '.join(valid) or 'none'}"
            )
        return builder(**kwargs)

    def defaults(self, name: str) -> Dict[str, Any]:
        """The builder's keyword arguments that have defaults, with those defaults."""
        params = inspect.signature(self.get(name)).parameters
        return {
            key: param.default
            for key, param in params.items()
            if param.default is not inspect.Parameter.empty
        }

    def check(self, name: str) -> None:
        """Raise a one-line ``UnknownNameError`` naming close matches and the valid choices."""
        if name in self._builders:
            return
        close = difflib.get_close_matches(str(name), self._builders, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'.{hint} Valid {self.kind}s: {', '.join(self.list())}"
        )

    def list(self, pattern: str = "*") -> List[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(n for n in self._builders if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"
