"""Trained weights from a file: a zoo model scored without training (``+model_args.<model>={weights: PATH}``).

The file is read with ``torch.load(weights_only=True)``: a state dict, or a dict holding one under
``state_dict`` or ``model`` (the harness's own ``model.pt``); a ``module.`` prefix on every key (a
model saved inside ``DataParallel``) is removed. The training spec records the file's sha256, not
its path, so a replaced file is a different model and a moved one the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from interpbench.integrity import sha256_file

OPTIONAL_SUFFIX = "num_batches_tracked"


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit their model; the message is one line."""


def weights_ref(path: Any) -> Dict[str, str]:
    """``{"path", "sha256"}`` of the weights file ``path`` (the spec keeps the hash, the record both)."""
    file = Path(str(path)).expanduser().resolve()
    if not file.is_file():
        raise WeightsError(f"no weights file {file}")
    return {"path": str(file), "sha256": sha256_file(file)}


def read_state_dict(path: Any) -> Dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (see the module docstring for the layouts read)."""
    try:
        stored = torch.load(Path(str(path)), map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, or objects beyond tensors and numbers
        text = " ".join(str(error).split())[:200]
        raise WeightsError(f"cannot read weights {path} ({type(error).__name__}: {text})") from None
    for key in ("state_dict", "model"):
        if isinstance(stored, dict) and isinstance(stored.get(key), dict):
            stored = stored[key]
            break
    if not isinstance(stored, dict) or not stored or not all(isinstance(v, torch.Tensor) for v in stored.values()):
        raise WeightsError(f"weights {path} hold no state dict (a mapping of names to tensors, or one under "
                           "'state_dict' or 'model')")
    if all(str(key).startswith("module.") for key in stored):
        stored = {str(key)[len("module."):]: value for key, value in stored.items()}
    return stored


def _listing(names: List[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def fit_problem(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> Optional[str]:
    """One line naming the first missing, unexpected and mis-shaped keys of ``state`` for ``model``,
    or ``None`` when it fits."""
    expected = model.state_dict()
    # batch norm's step counter is absent from files saved by old torch versions; it holds no weights
    missing = [key for key in expected if key not in state and not key.endswith(OPTIONAL_SUFFIX)]
    unexpected = [key for key in state if key not in expected]
    misshaped = [f"{key} {list(state[key].shape)} in the file, {list(expected[key].shape)} in the model"
                 for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    parts = []
    if missing:
        parts.append(f"missing {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listing(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped {_listing(misshaped, shown=2)}")
    return "; ".join(parts) or None


def load_weights(model: torch.nn.Module, path: Any, name: str = "the model") -> torch.nn.Module:
    """``model`` with the weights of ``path`` loaded; raises :class:`WeightsError` when they do not fit."""
    state = read_state_dict(path)
    problem = fit_problem(model, state)
    if problem:
        raise WeightsError(f"weights {path} do not fit {name}: {problem}")
    model.load_state_dict(state, strict=False)  # fit_problem checked every key but the optional ones
    return model
