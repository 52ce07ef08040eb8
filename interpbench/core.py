"""The records that cross a boundary: a training spec, a cell and a cell's result.

Each is a frozen dataclass; its identity (what determines its output) is hashed into the key
that names its files in the store."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.registry import UnknownNameError
from interpbench.storage import plain, read_json, stable_hash
from interpbench.zoo import MODELS

# Data arguments that change where data is found or fetched, not what it is.
DATA_KEYS_NOT_IN_IDENTITY = {"download"}
RECORD_VERSION = 1  # of TrainSpec's and Cell's JSON records


class RecordError(ValueError):
    """A stored record that does not fit its schema; the message is one line naming the problem."""


def field_problem(obj: Any, required: Dict[str, Tuple[type, ...]], optional: Dict[str, Tuple[type, ...]],
                  allow_unknown: bool = False) -> Optional[str]:
    """What is wrong with the JSON object ``obj`` against ``required`` and ``optional`` field types
    (checked in the schema's order), or ``None``; fields outside both are a problem unless
    ``allow_unknown``. Serves every stored record (:mod:`interpbench.integrity` reads ``record.json``
    with it)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    missing = [name for name in required if name not in obj]
    if missing:
        return f"missing fields {', '.join(missing)}"
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown and not allow_unknown:
        return f"unknown fields {', '.join(unknown)}"
    for fields in (required, optional):
        for name, types in fields.items():
            if name not in obj:
                continue
            value = obj[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return (f"field {name} is {type(value).__name__}, expected "
                        + " or ".join("null" if t is type(None) else t.__name__ for t in types))
    return None


def _fields(obj: Any, source: str, required: Dict[str, Tuple[type, ...]],
            optional: Dict[str, Tuple[type, ...]]) -> Dict[str, Any]:
    """``obj`` (``version`` aside) checked by :func:`field_problem`; raises :class:`RecordError`
    naming ``source`` and the first problem."""
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != "version"}
    problem = field_problem(obj, required, optional)
    if problem:
        raise RecordError(f"{source}: {problem}")
    return obj


def model_version(name: str) -> Optional[int]:
    """The ``version`` a zoo model was registered with (raised when its architecture changes, so
    checkpoints, maps and cells of the old one get new keys), or None."""
    return MODELS.info(name).get("version") if name in MODELS else None


@dataclass(frozen=True)
class TrainSpec:
    model: str
    data: Dict[str, Any]
    recipe: Dict[str, Any]
    size: str = "cpu"
    model_args: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    parent: Optional["TrainSpec"] = None  # derived models start from this trained model
    # {"path", "sha256"} of a weights file: the model is loaded from it, not trained
    weights: Optional[Dict[str, str]] = None

    def identity(self) -> Dict[str, Any]:
        data = {k: v for k, v in plain(self.data).items() if k not in DATA_KEYS_NOT_IN_IDENTITY}
        identity = {"model": self.model, "size": self.size, "model_args": plain(self.model_args),
                    "data": data, "recipe": plain(self.recipe), "seed": self.seed}
        version = model_version(self.model)
        if version is not None:  # a registered architecture's revision (absent: keys as before)
            identity["model_version"] = version
        side = data.get("image_size")
        augment = str(plain(self.recipe).get("augment", "")) if self.recipe else ""
        if isinstance(side, int) and side >= 64 and augment in ("crop_flip", "auto"):
            # from 64 px, crop_flip is a random resized crop (it was pad-and-crop): other weights
            identity["augment_version"] = 2
        if self.weights is not None:  # the file's content fixes the weights: no recipe, no parent
            del identity["recipe"]
            identity.pop("augment_version", None)
            identity["weights_sha256"] = self.weights["sha256"]
            return identity
        if self.parent is not None:
            identity["parent"] = self.parent.identity()
        return identity

    @property
    def depth(self) -> int:
        """0 for a model trained from scratch, 1 + the parent's depth for a derived one."""
        return 0 if self.parent is None else 1 + self.parent.depth

    def key(self) -> str:
        return stable_hash(self.identity())

    def folder(self, store: Path) -> Path:
        return Path(store) / "models" / f"{self.model}-{self.key()}"

    def to_json(self) -> Dict[str, Any]:
        """Every field (the data's ``download`` too), versioned; :meth:`from_json` reads it back."""
        return {"version": RECORD_VERSION, "model": self.model, "data": plain(self.data),
                "recipe": plain(self.recipe), "size": self.size, "model_args": plain(self.model_args),
                "seed": self.seed, "parent": None if self.parent is None else self.parent.to_json(),
                "weights": None if self.weights is None else dict(self.weights)}

    @classmethod
    def from_json(cls, obj: Any, source: str = "training spec") -> "TrainSpec":
        """A spec from :meth:`to_json`'s record, or from an identity (a cell record's ``train``),
        which has the same key."""
        fields = _fields(obj, source, {"model": (str,), "data": (dict,)},
                         {"recipe": (dict,), "size": (str,), "model_args": (dict,), "seed": (int,),
                          "parent": (dict, type(None)), "weights": (dict, type(None)), "weights_sha256": (str,),
                          "model_version": (int,)})
        version = fields.pop("model_version", None)  # an identity's: the zoo's version when written
        if version is not None and version != model_version(fields["model"]):
            raise RecordError(f"{source}: model {fields['model']} of version {version}; the zoo's is "
                              f"{model_version(fields['model'])}")
        sha = fields.pop("weights_sha256", None)  # an identity's form of the weights (no path)
        if sha is not None and fields.get("weights") is None:
            fields["weights"] = {"path": "", "sha256": sha}
        fields.setdefault("recipe", {})
        if "recipe" not in obj and fields.get("weights") is None:
            raise RecordError(f"{source}: missing fields recipe")
        parent = fields.pop("parent", None)
        return cls(**fields, parent=None if parent is None else cls.from_json(parent, f"{source} (parent)"))


TARGETS = ("predicted", "label")


def evaluation_indices(num_test: int, num_images: int, seed: int = 0) -> torch.Tensor:
    """Which test images a cell scores: ``num_images`` of a seeded permutation, in index order.

    Test sets stored class by class (an ImageFolder's sorted folders) would otherwise give a
    prefix of one class only. The evaluation draws its images by this rule and the map export
    (:mod:`interpbench.report.export`) recovers their ids by it, without loading the dataset.
    """
    order = torch.randperm(num_test, generator=torch.Generator().manual_seed(seed))
    return order[: min(num_images, num_test)].sort().values


@dataclass(frozen=True)
class Cell:
    train: TrainSpec
    explainer: str
    metric: str
    explainer_args: Dict[str, Any] = field(default_factory=dict)
    metric_args: Dict[str, Any] = field(default_factory=dict)
    num_images: int = 500
    batch_size: int = 250
    target: str = "predicted"  # which class the explainer explains
    eval_seed: int = 0  # picks the scored test images

    def identity(self) -> Dict[str, Any]:
        return {
            "train": self.train.identity(), "explainer": self.explainer,
            "explainer_args": plain(self.explainer_args), "metric": self.metric,
            "metric_args": plain(self.metric_args), "num_images": self.num_images,
            "target": self.target, "eval_seed": self.eval_seed,
        }

    def key(self) -> str:
        return stable_hash(self.identity())

    def path(self, store: Path) -> Path:
        return Path(store) / "cells" / f"{self.train.model}__{self.explainer}__{self.metric}-{self.key()}.json"

    def saliency_path(self, store: Path) -> Path:
        # Everything that fixes the maps: the cell's identity less its metric.
        saliency_key = stable_hash({k: v for k, v in self.identity().items()
                                    if k not in ("metric", "metric_args")})
        return Path(store) / "saliency" / f"{self.train.model}__{self.explainer}-{saliency_key}.pt"

    def to_json(self) -> Dict[str, Any]:
        """Every field (``batch_size`` too), versioned; :meth:`from_json` reads it back."""
        return {"version": RECORD_VERSION, "train": self.train.to_json(), "explainer": self.explainer,
                "metric": self.metric, "explainer_args": plain(self.explainer_args),
                "metric_args": plain(self.metric_args), "num_images": self.num_images,
                "batch_size": self.batch_size, "target": self.target, "eval_seed": self.eval_seed}

    @classmethod
    def from_json(cls, obj: Any, source: str = "cell") -> "Cell":
        """A cell from :meth:`to_json`'s record, or from an identity (a cell result's ``cell``, which
        has no ``batch_size``: the default is taken), with the same key."""
        fields = _fields(obj, source, {"train": (dict,), "explainer": (str,), "metric": (str,)},
                         {"explainer_args": (dict,), "metric_args": (dict,), "num_images": (int,),
                          "batch_size": (int,), "target": (str,), "eval_seed": (int,)})
        if fields.get("target", "predicted") not in TARGETS:
            raise RecordError(f"{source}: target {fields['target']!r}; valid targets: {', '.join(TARGETS)}")
        return cls(**dict(fields, train=TrainSpec.from_json(fields["train"], f"{source} (train)")))


CELL_RESULT_VERSION = 1
# field -> the types its JSON value may have (None: may be null)
_CELL_RESULT_FIELDS: Dict[str, Tuple[type, ...]] = {
    "cell": (dict,), "key": (str,), "model": (str,), "explainer": (str,), "explainer_label": (str,),
    "metric": (str,), "label": (str,), "higher_is_better": (bool,), "flag": (str, type(None)),
    "data": (str,), "seed": (int,), "size": (str,), "score": (float, int, type(None)),
    "per_image": (list,), "curve_x": (list, type(None)), "curve": (list, type(None)), "num_images": (int,),
    "test_accuracy": (float, int), "model_key": (str,), "seconds": (float, int), "git_commit": (str,),
    "torch": (str,),
}


# Arguments that set how the work is batched, not the maps (RISE and Score-CAM: the same masks and
# channels in other forward batches): they stay out of a label.
COST_ONLY_ARGS = ("batch_size",)


def explainer_label_of(name: str, args: Dict[str, Any]) -> str:
    """The explainer's name, plus every argument that differs from its registered default and changes
    the maps (fixed when the cell is computed, so a report never needs the registry)."""
    try:
        defaults = plain(EXPLAINERS.defaults(name))
    except UnknownNameError:  # an explainer this checkout does not have: show no arguments
        return name
    changed = {k: v for k, v in plain(args or {}).items()
               if k in defaults and defaults[k] != v and k not in COST_ONLY_ARGS}
    if not changed:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"


@dataclass(frozen=True)
class CellResult:
    """One computed cell: its identity, its mean score, the per-image scores and curve, and where it
    came from. ``to_json``/``from_json`` read and write the versioned record of ``<store>/cells/``
    and of a report's ``cells.json``; records written before versioning (no ``version``) are read
    as version 0 and get their explainer label from the registry once."""
    cell: Dict[str, Any]
    key: str
    model: str
    explainer: str
    explainer_label: str
    metric: str
    label: str
    higher_is_better: bool
    flag: Optional[str]
    data: str
    seed: int
    size: str
    score: Optional[float]
    per_image: List[Optional[float]]
    curve_x: Optional[List[float]]
    curve: Optional[List[float]]
    num_images: int
    test_accuracy: float
    model_key: str
    seconds: float
    git_commit: str
    torch: str
    version: int = CELL_RESULT_VERSION

    @property
    def explainer_args(self) -> Dict[str, Any]:
        return dict(self.cell.get("explainer_args") or {})

    @property
    def metric_args(self) -> Dict[str, Any]:
        return dict(self.cell.get("metric_args") or {})

    @property
    def target(self) -> Optional[str]:
        return self.cell.get("target")

    @property
    def train(self) -> Dict[str, Any]:
        return dict(self.cell.get("train") or {})

    def settings(self) -> Dict[str, Any]:
        """What the scores depend on besides the model and its seed: the evaluation settings and the
        explainer's and metric's arguments (a report never mixes cells that differ in these). A cell
        whose metric names its own target (``metric_args["target"]``: average_drop's) explains that
        class whatever the sweep's target: the target is then the metric's argument, left out here."""
        data = {k: v for k, v in (self.train.get("data") or {}).items() if k not in DATA_KEYS_NOT_IN_IDENTITY}
        settings = {"data": data, "size": self.size, "num_images": self.cell.get("num_images"),
                    "target": self.target, "eval_seed": self.cell.get("eval_seed")}
        if "target" in self.metric_args:
            del settings["target"]
        return settings

    def to_json(self) -> Dict[str, Any]:
        out = {name: getattr(self, name) for name in _CELL_RESULT_FIELDS}
        out["version"] = self.version
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str = "cell result") -> "CellResult":
        """The record ``obj`` (a parsed JSON object), checked field by field; a bad one raises
        :class:`RecordError` naming ``source`` and the first problem."""
        if not isinstance(obj, dict):
            raise RecordError(f"{source}: not a JSON object")
        obj = dict(obj)
        version = obj.pop("version", 0)
        if version not in (0, CELL_RESULT_VERSION):
            raise RecordError(f"{source}: record version {version!r}; this checkout reads 0 and "
                              f"{CELL_RESULT_VERSION}")
        if version == 0 and "explainer_label" not in obj and isinstance(obj.get("explainer"), str):
            obj["explainer_label"] = explainer_label_of(obj["explainer"],
                                                        (obj.get("cell") or {}).get("explainer_args") or {})
        if version == 0:
            obj.setdefault("flag", None)  # records from before sanity flags had none
        obj = _fields(obj, source, _CELL_RESULT_FIELDS, {})
        if len(obj["per_image"]) != obj["num_images"]:
            raise RecordError(f"{source}: {len(obj['per_image'])} per-image scores for num_images "
                              f"{obj['num_images']}")
        return cls(**obj, version=CELL_RESULT_VERSION)


def read_cell_result(path: Path) -> CellResult:
    """The cell result stored at ``path``; a file that is not valid JSON or does not fit the schema
    raises :class:`RecordError` naming the file."""
    try:
        obj = read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: not valid JSON ({error})") from None
    return CellResult.from_json(obj, source=str(path))
