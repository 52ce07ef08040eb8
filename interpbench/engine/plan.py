"""Planning a sweep: every name and value of the config checked, then expanded into training specs
(one per model and seed) and cells (model x explainer x metric x data x seed). Nothing is written.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig

from interpbench.config import ConfigError, validate
from interpbench.core import Cell, TrainSpec
from interpbench.data import load_dataset
from interpbench.data.base import ImageFolderError
from interpbench.engine.preflight import activation_bytes
from interpbench.engine.train import default_recipe_name, multiply_accumulates
from interpbench.engine.weights import WeightsError, load_weights, weights_ref
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.plugins import load_plugins
from interpbench.registry import Registry, UnknownNameError
from interpbench.storage import plain
from interpbench.zoo import MODELS, create_model

DEFAULT_EXPLAINERS = ("native", "gradcam", "random")


class SweepConfigError(ConfigError):
    """A bad name or value in the sweep's config; the message is one line."""


def resolve_names(value: Any, registry: Registry, option: str) -> List[str]:
    """``all``, a name, a comma-separated string or a list -> registered names (checked)."""
    if isinstance(value, (list, tuple, ListConfig)):
        names = [str(v) for v in value]
    else:
        names = [part.strip() for part in str(value).split(",") if part.strip()]
    if names == ["all"]:  # models registered with in_all=False (the CIFAR ResNets) are named, not implied
        return [name for name in registry.list() if registry.info(name).get("in_all", True)]
    resolved: List[str] = []
    for name in names:
        if any(char in name for char in "*?[") and registry.list(name):  # a shell pattern: every match
            resolved.extend(registry.list(name))
            continue
        try:
            registry.check(name)
        except UnknownNameError as error:
            raise SweepConfigError(f"{option}={name}: {error}") from None
        resolved.append(name)
    if not resolved:
        raise SweepConfigError(f"{option} is empty; valid names: all, {', '.join(registry.list())}")
    return list(dict.fromkeys(resolved))


@dataclass
class Plan:
    specs: Dict[str, Any] = field(default_factory=dict)  # model key -> TrainSpec
    cells: Dict[str, List[Any]] = field(default_factory=dict)  # model key -> its cells
    cost: Dict[str, float] = field(default_factory=dict)  # model key -> training MACs (for ordering)
    macs: Dict[str, float] = field(default_factory=dict)  # model key -> multiply-adds of one image's forward pass
    train_images: Dict[str, int] = field(default_factory=dict)  # model key -> images per training epoch
    epochs: Dict[str, int] = field(default_factory=dict)  # model key -> training epochs (0: loaded or fitted)
    activation_bytes: Dict[str, float] = field(default_factory=dict)  # model key -> one image's module outputs
    parameter_bytes: Dict[str, float] = field(default_factory=dict)  # model key -> its parameters' bytes
    probes: Dict[str, Any] = field(default_factory=dict)  # model name -> an untrained instance (preflight timing)
    num_classes: Optional[int] = None
    input_size: Optional[Tuple[int, ...]] = None  # (channels, height, width) of the data
    skipped: List[str] = field(default_factory=list)  # explainer/model pairs that do not apply

    @property
    def all_cells(self) -> List[Any]:
        return [cell for cells in self.cells.values() for cell in cells]


def cap_image_size(cfg: DictConfig) -> None:
    """The profile's working resolution: with ``profile.max_image_size`` set (the ``cpu`` profile:
    64) and a dataset asked for at a larger ``data.image_size`` (an ImageFolder at 224 px), the data
    are decoded at ``max_image_size`` instead; ``profile.image_size_asked`` records the size asked
    for, so that the leaderboard's notes say so. ``profile=paper`` keeps the size asked for."""
    from omegaconf import open_dict

    limit = cfg.profile.get("max_image_size")
    asked = cfg.data.get("image_size")
    if limit and isinstance(asked, int) and asked > int(limit):
        with open_dict(cfg):
            cfg.data.image_size = int(limit)
            cfg.profile.image_size_asked = asked


def plan_sweep(cfg: DictConfig) -> Plan:
    """Check every key, value and name in ``cfg`` and expand it into training specs and cells."""
    validate(cfg)  # every key and value (interpbench.config); the names follow
    load_plugins(cfg.get("plugins"))  # plugin files and entry points register their models first
    models = resolve_names(cfg.zoo, MODELS, "zoo")
    metrics = resolve_names(cfg.metric, METRICS, "metric")
    if str(cfg.explainer) == "default":
        explainer_names = list(DEFAULT_EXPLAINERS)
    else:
        explainer_names = resolve_names(cfg.explainer, EXPLAINERS, "explainer")
    for name in cfg.get("model_args", {}) or {}:
        resolve_names(name, MODELS, "model_args")
    explainer_objects = {}
    for name in explainer_names:
        try:
            explainer_objects[name] = EXPLAINERS.create(name, **plain(cfg.explainers.get(name, {})))
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"explainers.{name}: {error}") from None
    metric_objects = {}
    for name in metrics:
        try:
            metric_objects[name] = METRICS.create(name, **plain(cfg.metrics.get(name, {})))
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"metrics.{name}: {error}") from None

    cap_image_size(cfg)
    dataset = load_dataset(cfg.data)  # decodes once into the cache; jobs then only read it
    if dataset.test.masks is None:  # localisation metrics need ground-truth object masks
        unmasked = [name for name in metrics if metric_objects[name].needs_masks]
        metrics = [name for name in metrics if name not in unmasked]
        if not metrics:
            raise SweepConfigError(f"metric {', '.join(unmasked)} needs ground-truth masks; data "
                                   f"'{cfg.data.name}' has none (synthetic has)")
    else:
        unmasked = []

    def recipe_and_args(model_name: str):
        recipe_name = default_recipe_name(model_name)
        if recipe_name not in cfg.profile.recipes:
            raise SweepConfigError(
                f"profile '{cfg.profile.name}' has no recipe '{recipe_name}' for model {model_name}; "
                f"its recipes: {', '.join(cfg.profile.recipes)}"
            )
        return plain(cfg.profile.recipes[recipe_name]), model_args_of(model_name)

    def model_args_of(model_name: str) -> Dict[str, Any]:
        """``model_args.<model>``; a derived model takes its parent's ``mean`` and ``std`` unless it
        sets its own (it normalises its input as the parent it is built on)."""
        args = plain((cfg.get("model_args", {}) or {}).get(model_name, {}))
        parent_name = MODELS.info(model_name).get("parent")
        if parent_name and "weights" not in args:
            inherited = model_args_of(parent_name)
            args = {**{key: inherited[key] for key in ("mean", "std") if key in inherited}, **args}
        return args

    weight_refs: Dict[str, Dict[str, str]] = {}

    def weights_of(model_name: str, model_args: Dict[str, Any]) -> Optional[Dict[str, str]]:
        """``model_args.<model>.weights`` (removed from the builder's arguments) as ``{path, sha256}``."""
        path = model_args.pop("weights", None)
        if path is None:
            return None
        if model_name not in weight_refs:
            try:
                weight_refs[model_name] = weights_ref(path)
            except WeightsError as error:
                raise SweepConfigError(f"model_args.{model_name}.weights: {error}") from None
        return weight_refs[model_name]

    def make_spec(model_name: str, seed: int) -> TrainSpec:
        """The training spec of ``model_name``, with its parent's spec for a derived model (none when
        the model is loaded from a weights file)."""
        recipe, model_args = recipe_and_args(model_name)
        weights = weights_of(model_name, model_args)
        parent_name = MODELS.info(model_name).get("parent")
        parent = make_spec(parent_name, seed) if parent_name and weights is None else None
        return TrainSpec(model=model_name, data=plain(cfg.data), recipe=recipe, size=cfg.profile.size,
                         model_args=model_args, seed=seed, parent=parent, weights=weights)

    plan = Plan(num_classes=dataset.num_classes, input_size=tuple(dataset.input_size))
    from omegaconf import open_dict

    with open_dict(cfg):  # for the leaderboard's notes
        cfg.profile.image_size = [int(v) for v in dataset.input_size]
    for model_name in models:
        recipe, model_args = recipe_and_args(model_name)
        weights = weights_of(model_name, model_args)
        try:
            probe = create_model(model_name, size=cfg.profile.size, **{**dataset.model_config(), **model_args})
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"model {model_name}: {error}") from None
        if weights is not None:  # a file that does not fit is named before anything runs
            try:
                load_weights(probe, weights["path"], name=model_name)
            except WeightsError as error:
                raise SweepConfigError(f"model_args.{model_name}.weights: {error}") from None
        train_images = min(len(dataset.train), recipe["max_train_images"] or len(dataset.train))
        epochs = 0 if weights is not None else recipe["epochs"]
        macs = multiply_accumulates(probe, dataset.input_size)
        activations = activation_bytes(probe, dataset.input_size)
        parameters = float(sum(p.numel() * p.element_size() for p in probe.parameters()))
        plan.probes[model_name] = probe
        cost = macs * train_images * epochs
        for seed in cfg.seeds:
            spec = make_spec(model_name, int(seed))
            plan.cost[spec.key()] = cost
            plan.macs[spec.key()], plan.train_images[spec.key()], plan.epochs[spec.key()] = macs, train_images, epochs
            plan.activation_bytes[spec.key()], plan.parameter_bytes[spec.key()] = activations, parameters
            cells = []
            for explainer_name in explainer_names:
                if not explainer_objects[explainer_name].applies_to(probe):
                    plan.skipped.append(f"{model_name}/{explainer_name}")
                    continue
                for metric_name in metrics:
                    # A metric that names the class its maps must explain (``explains``: average_drop
                    # and its family) gets cells explaining that class, whatever the eval target; its
                    # target goes into its arguments, which CellResult.settings counts as its own.
                    own = getattr(metric_objects[metric_name], "explains", None)
                    metric_args = plain(cfg.metrics.get(metric_name, {}))
                    if own is not None:
                        metric_args = dict(metric_args, target=own)
                    cells.append(Cell(
                        train=spec, explainer=explainer_name, metric=metric_name,
                        explainer_args=plain(cfg.explainers.get(explainer_name, {})),
                        metric_args=metric_args,
                        num_images=int(cfg.profile.eval.num_images),
                        batch_size=int(cfg.profile.eval.batch_size),
                        target=own or str(cfg.profile.eval.target),
                        eval_seed=int(cfg.profile.eval.seed),
                    ))
            plan.specs[spec.key()] = spec
            plan.cells[spec.key()] = cells
    plan.skipped = sorted(set(plan.skipped)) + [f"{name} (data '{cfg.data.name}' has no masks)" for name in unmasked]
    return plan


def plan_or_report(cfg: DictConfig) -> "Plan | None":
    """``plan_sweep(cfg)``, or ``None`` after printing a bad config's one-line error to stderr."""
    try:
        return plan_sweep(cfg)
    except (ConfigError, UnknownNameError, FileNotFoundError, ImageFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None
