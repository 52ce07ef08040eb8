"""The schema of the sweep's config, checked when a sweep is planned, before anything is written.

``validate(cfg)`` checks every key and value of a composed config (``runners/sweep.py``'s, or one
from hydra's compose API) and raises :class:`ConfigError` with a one-line message for the first
problem: a bad value names the full key, the rule and the value
(``profile.eval.num_images must be >= 1, got -5``); an unknown key lists the valid keys at its
place (``unknown key metrics.pixel_removal.stepz; valid keys: baseline, order, steps``).

What is checked:

- ``profile``: its name, its ``size`` (one the zoo builds), ``eval`` (``num_images``, ``batch_size``,
  ``seed``, ``target``) and every recipe under ``recipes`` (the keys of ``RECIPE_KEYS``, and
  ``milestones`` and ``gamma``, which ``schedule: step`` needs and the other schedules refuse);
- the top-level keys: ``zoo``, ``explainer``, ``metric``, ``seeds``, ``model_args``, ``device``
  (also whether torch sees the device it names), ``store``, ``results_dir``, ``progress``, ``plugins``
  (a list of paths; the files themselves are loaded by :mod:`interpbench.plugins`);
- ``launcher``: the options of each launcher (:data:`LAUNCHER_SCHEMAS`);
- ``data``: the dataset's arguments, typed by the dataset registry's defaults (counts ``>= 1``);
- ``explainers.<name>`` and ``metrics.<name>``: each method's arguments, typed by the registry's
  defaults (widened by the builder's annotation: ``Union[str, float]`` takes a number too).

Names of models, explainers and metrics (``zoo=``, ``metric=``, ...) and the values a method's own
constructor checks stay with :func:`interpbench.engine.plan.plan_sweep`.
"""
from __future__ import annotations

import collections.abc
import importlib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from interpbench.core import TARGETS
from interpbench.data import DATASETS
from interpbench.engine.train import AUGMENTS, OPTIMIZERS, OPTIONAL_RECIPE_KEYS, RECIPE_KEYS, SCHEDULES, check_schedule
from interpbench.explainers import EXPLAINERS
from interpbench.launch.base import LAUNCHERS
from interpbench.launch.slurm_client import GROUP_CELLS
from interpbench.metrics import METRICS
from interpbench.registry import Registry
from interpbench.storage import plain

__all__ = [
    "DEVICE_PATTERN", "EVAL", "LAUNCHER_SCHEMAS", "PROFILE", "RECIPE", "TOP_LEVEL", "ConfigError", "Rule",
    "RECIPE_OPTIONAL", "argument_rules", "check_device", "check_key_path", "check_recipe_section", "check_section",
    "check_value", "set_key_path",
    "unknown_key_message", "validate", "zoo_sizes",
]


class ConfigError(ValueError):
    """A bad key or value in the sweep's config; the message is one line."""


KIND_TEXT = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "list": "a list", "mapping": "a mapping",
}
PLURAL_TEXT = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings",
               "list": "lists", "mapping": "mappings"}


@dataclass(frozen=True)
class Rule:
    """What one value may be.

    ``kinds``: any of ``int``, ``float`` (takes ints too), ``bool``, ``str``, ``list``, ``mapping``;
    empty: anything. ``null``: ``None`` is allowed too. ``least``/``above``/``below``: a number must
    be ``>= least``, ``> above``, ``< below``. ``choices``: the value must be one of them.
    ``items``: the kinds of a list's items; ``nonempty``: a list must not be empty.
    ``text``: what the value must be, for messages (default: made from the kinds).
    """
    kinds: FrozenSet[str] = frozenset()
    null: bool = False
    least: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None
    items: FrozenSet[str] = frozenset()
    nonempty: bool = False
    text: Optional[str] = None

    def kind_text(self) -> str:
        if self.text:
            return f"null or {self.text}" if self.null else self.text
        parts = []
        for kind in ("int", "float", "bool", "str", "list", "mapping"):
            if kind not in self.kinds:
                continue
            if kind == "list" and self.items:
                items = " or ".join(PLURAL_TEXT[k] for k in sorted(self.items))
                parts.append(("a non-empty list" if self.nonempty else "a list") + f" of {items}")
            elif kind == "int" and "float" in self.kinds:
                continue  # a number covers it
            else:
                parts.append(KIND_TEXT[kind])
        text = " or ".join(parts) or "anything"
        return f"null or {text}" if self.null else text

    def range_text(self) -> str:
        if self.least is not None and self.below is not None:
            return f"in [{_number(self.least)}, {_number(self.below)})"
        parts = []
        if self.least is not None:
            parts.append(f">= {_number(self.least)}")
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.below is not None:
            parts.append(f"< {_number(self.below)}")
        return " and ".join(parts)


def rule(*kinds: str, **options: Any) -> Rule:
    return Rule(kinds=frozenset(kinds), **options)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def show(value: Any) -> str:
    """A value as a message quotes it: strings quoted, ``None`` as null, booleans as YAML writes them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return repr(plain(value))


def kind_of(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return None


def _fits(value: Any, kinds: Iterable[str]) -> bool:
    kinds = set(kinds)
    kind = kind_of(value)
    return not kinds or kind in kinds or (kind == "int" and "float" in kinds)


def check_value(key: str, value: Any, rule_: Rule) -> Optional[str]:
    """The one-line problem with ``value`` at ``key`` under ``rule_``, or ``None`` when it is fine."""
    if value is None:
        return None if rule_.null or not rule_.kinds else f"{key} must be {rule_.kind_text()}, got null"
    if not _fits(value, rule_.kinds):
        if rule_.choices is not None:
            return f"{key} must be one of {', '.join(map(str, rule_.choices))}, got {show(value)}"
        return f"{key} must be {rule_.kind_text()}, got {show(value)}"
    if rule_.choices is not None and value not in rule_.choices:
        return f"{key} must be one of {', '.join(map(str, rule_.choices))}, got {show(value)}"
    if kind_of(value) in ("int", "float"):
        if isinstance(value, float) and not math.isfinite(value) and (
                rule_.least is not None or rule_.above is not None or rule_.below is not None):
            return f"{key} must be a finite number, got {value}"
        bad = ((rule_.least is not None and value < rule_.least)
               or (rule_.above is not None and value <= rule_.above)
               or (rule_.below is not None and value >= rule_.below))
        if bad:
            prefix = f"null or {rule_.kind_text().removeprefix('null or ')} " if rule_.null else ""
            return f"{key} must be {prefix}{rule_.range_text()}, got {show(value)}"
    if kind_of(value) == "list":
        if rule_.nonempty and not value:
            return f"{key} must be {rule_.kind_text()}, got []"
        if rule_.items and not all(_fits(item, rule_.items) and item is not None for item in value):
            return f"{key} must be {rule_.kind_text()}, got {show(value)}"
    return None


def unknown_key_message(key: str, valid: Iterable[str]) -> str:
    """``unknown key <key>; valid keys: a, b, c`` (sorted), with a hint where keys are added with ``+``."""
    names = sorted(str(name) for name in valid)
    message = f"unknown key {key}; valid keys: {', '.join(names) or 'none'}"
    parts = key.split(".")
    if parts[0] == "model_args" and len(parts) >= 2:
        message += f" (a model's builder arguments are added with '+model_args.{parts[1]}={{...}}')"
    return message


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


Schema = Mapping[str, Any]  # key -> Rule, or a nested schema


def check_section(prefix: str, node: Any, schema: Schema, optional: Optional[Mapping[str, Rule]] = None) -> None:
    """Check a mapping against ``schema`` (keys to :class:`Rule` or nested schemas); raise on the first
    problem. ``optional``: keys (to their rules) the mapping may leave out."""
    optional = optional or {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{prefix} must be a mapping with keys {', '.join(sorted(schema))}, got {show(node)}")
    for key in node:
        if key not in schema and key not in optional:
            shown = [name for name in [*schema, *optional] if _join(prefix, name) not in RECORDED_KEYS]
            raise ConfigError(unknown_key_message(_join(prefix, key), shown))
    for key, entry in [*schema.items(), *optional.items()]:
        if key not in node:
            if key in optional:
                continue
            raise ConfigError(f"missing key {_join(prefix, key)}; {prefix or 'the config'} needs "
                              f"{', '.join(sorted(schema))}")
        if isinstance(entry, Rule):
            problem = check_value(_join(prefix, key), node[key], entry)
            if problem:
                raise ConfigError(problem)
        else:
            check_section(_join(prefix, key), node[key], entry)


# --- the schema -------------------------------------------------------------------------------

NAMES = rule("str", "list", items=frozenset({"str"}), text="a name, a comma-separated string or a list of names")
OPTIONAL_COUNT = rule("int", null=True, least=1)
COUNT = rule("int", least=1)

EVAL: Schema = {
    "num_images": COUNT,
    "batch_size": COUNT,
    "seed": rule("int"),
    "target": rule("str", choices=tuple(TARGETS)),
}

RECIPE: Schema = {
    "optimizer": rule("str", choices=OPTIMIZERS),
    "lr": rule("float", least=0),
    "momentum": rule("float", least=0, below=1),
    "nesterov": rule("bool"),
    "weight_decay": rule("float", least=0),
    "batch_size": COUNT,
    "epochs": rule("int", least=0),
    "schedule": rule("str", choices=SCHEDULES),
    "warmup_epochs": rule("float", least=0),
    "augment": rule("str", choices=tuple(AUGMENTS)),
    "max_train_images": OPTIONAL_COUNT,
}
# Only schedule: step takes these (check_schedule: it needs both, the other schedules take neither).
RECIPE_OPTIONAL: Dict[str, Rule] = {
    "milestones": rule("list", items=frozenset({"int"}), nonempty=True,
                       text="a non-empty list of increasing epochs (integers >= 1)"),
    "gamma": rule("float"),  # in (0, 1]: check_schedule
}
assert set(RECIPE) == set(RECIPE_KEYS), "the recipe schema must cover RECIPE_KEYS"
assert set(RECIPE_OPTIONAL) == set(OPTIONAL_RECIPE_KEYS), "the recipe schema must cover OPTIONAL_RECIPE_KEYS"


def check_recipe_section(prefix: str, recipe: Any) -> None:
    """Check one training recipe: its keys and values, then the step schedule's keys."""
    check_section(prefix, recipe, RECIPE, RECIPE_OPTIONAL)
    try:
        check_schedule(recipe, prefix)
    except ValueError as error:
        raise ConfigError(str(error)) from None

PROFILE: Schema = {"name": rule("str"), "size": rule("str"), "eval": EVAL, "recipes": rule("mapping")}
# Keys a profile may leave out: the largest image side it works at (larger data are decoded at this
# size), and what the planner records (the images' size, the size the data asked for; not offered
# as valid keys in messages: nobody sets them).
RECORDED_KEYS = frozenset({"profile.image_size", "profile.image_size_asked"})
PROFILE_OPTIONAL = {"max_image_size": rule("int", null=True, least=8),
                    "image_size": rule("list", null=True, items=frozenset({"int"})),
                    "image_size_asked": rule("int", null=True)}

LAUNCHER_SCHEMAS: Dict[str, Schema] = {
    "debug": {"name": rule("str")},
    "local": {
        "name": rule("str"),
        "max_parallel": COUNT,
        "threads_per_job": OPTIONAL_COUNT,
        "timeout_min": rule("float", above=0),
    },
    # SLURM task resources (0 GPUs: a CPU partition; null: the cluster's default).
    "slurm": {
        "name": rule("str"),
        "partition": rule("str", "int", null=True),
        "account": rule("str", "int", null=True),
        "qos": rule("str", "int", null=True),
        "time_min": COUNT,
        "gpus_per_node": rule("int", null=True, least=0),
        "cpus_per_task": rule("int", null=True, least=0),
        "mem_gb": rule("float", null=True, above=0),
        "array_parallelism": COUNT,
        "signal_delay_s": rule("int", least=0),
        "max_requeues": rule("int", least=0),
        "setup": rule("list", null=True, items=frozenset({"str", "int", "float"}), text="a list of shell lines"),
        "extra_sbatch": rule("mapping", null=True, text="a mapping of sbatch flags"),
        "group_cells": rule("str", choices=tuple(GROUP_CELLS)),
        "threads_per_job": rule("int", null=True, least=0),
        "wait": rule("bool"),
        "poll_s": rule("float", above=0),
    },
}

TOP_LEVEL: Schema = {
    "zoo": NAMES,
    "explainer": NAMES,
    "metric": NAMES,
    "seeds": rule("list", items=frozenset({"int"}), nonempty=True),
    "model_args": rule("mapping", null=True),
    "device": rule("str"),
    "store": rule("str", null=True),
    "results_dir": rule("str"),
    "progress": rule("bool"),
    "preflight": rule("str", choices=("check", "plan", "force", "off")),
    "checkpoint_every_min": rule("float", least=0),
    "plugins": rule("list", items=frozenset({"str"}), text="a list of paths to .py files"),
    "data": rule("mapping"),
    "profile": rule("mapping"),
    "launcher": rule("mapping"),
    "explainers": rule("mapping"),
    "metrics": rule("mapping"),
}

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DATA_COUNTS = ("num_train", "num_test", "image_size")
# Where the zoo's families keep their named sizes (profile.size must be one every family builds).
SIZE_TABLES = (("fa_cnn", "SIZES"), ("resnet", "WIDTHS"), ("coda", "SIZES"), ("bcos", "CNN_WIDTHS"),
               ("bcosify", "WIDTHS"))


def zoo_sizes() -> List[str]:
    """The model sizes (``profile.size``) every family of the zoo builds, e.g. ``cpu``, ``paper``."""
    sizes: Optional[List[str]] = None
    for module_name, table in SIZE_TABLES:
        try:
            found = list(getattr(importlib.import_module(f"interpbench.zoo.{module_name}"), table))
        except (ImportError, AttributeError, TypeError):
            continue
        sizes = found if sizes is None else [size for size in sizes if size in found]
    return sizes or ["cpu", "paper"]


# --- the registries' arguments ----------------------------------------------------------------

BUILTIN_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list",
                 dict: "mapping"}


def _annotation_kinds(annotation: Any) -> Optional[Tuple[FrozenSet[str], bool]]:
    """(kinds, takes None) of a type annotation, or ``None`` when it says nothing usable."""
    if annotation in BUILTIN_KINDS:
        return frozenset({BUILTIN_KINDS[annotation]}), False
    if annotation is type(None):
        return frozenset(), True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        kinds, null = set(), False
        for member in typing.get_args(annotation):
            found = _annotation_kinds(member)
            if found is None:
                return None
            kinds |= found[0]
            null = null or found[1]
        return frozenset(kinds), null
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        return frozenset({"list"}), False
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return frozenset({"mapping"}), False
    return None


def _type_hints(builder: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except (NameError, TypeError, AttributeError):  # an annotation that does not resolve: the defaults alone
        return {}


def argument_rules(registry: Registry, name: str, counts: Sequence[str] = ()) -> Tuple[Dict[str, Rule], bool]:
    """The rule of each argument of ``registry``'s ``name`` (from its default, widened by its
    annotation; a ``None`` default takes anything), and whether it takes any other keyword too.
    ``counts``: integer arguments that must be ``>= 1``."""
    builder = registry.get(name)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    hints = _type_hints(builder)
    rules: Dict[str, Rule] = {}
    for key, default in registry.defaults(name).items():
        default_kind = kind_of(default)
        if default is None or default_kind is None:
            rules[key] = Rule()
            continue
        kinds, null = {default_kind}, False
        if key in hints:
            found = _annotation_kinds(hints[key])
            if found is None:
                rules[key] = Rule()
                continue
            kinds |= found[0]
            null = found[1]
        least = 1 if (key in counts or key.startswith("num_")) and kinds <= {"int"} else None
        rules[key] = Rule(kinds=frozenset(kinds), null=null, least=least)
    return rules, takes_any


def check_arguments(prefix: str, node: Any, registry: Registry, name: str, counts: Sequence[str] = (),
                    other_keys: Sequence[str] = ()) -> None:
    """Check the arguments of ``registry``'s ``name`` under ``prefix`` (``other_keys``: keys that sit
    beside them, such as ``data.name``, listed among the valid keys)."""
    if node is None:
        return
    if not isinstance(node, Mapping):
        raise ConfigError(f"{prefix} must be a mapping of {registry.kind} '{name}''s arguments, got {show(node)}")
    rules, takes_any = argument_rules(registry, name, counts)
    for key, value in node.items():
        if key not in rules:
            if takes_any:
                continue
            raise ConfigError(unknown_key_message(_join(prefix, key), [*rules, *other_keys]))
        problem = check_value(_join(prefix, key), value, rules[key])
        if problem:
            raise ConfigError(problem)


def check_methods(prefix: str, node: Mapping[str, Any], registry: Registry) -> None:
    for name, arguments in node.items():
        if name not in registry:
            raise ConfigError(unknown_key_message(_join(prefix, name), registry.list()))
        check_arguments(_join(prefix, name), arguments, registry, name)


# --- the device -------------------------------------------------------------------------------

def check_device(device: Any, where_jobs_run: str = "here") -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and torch must see it
    (unless ``where_jobs_run`` is not ``"here"``: SLURM's jobs run on other machines)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {show(device)}")
    if where_jobs_run != "here" or device in ("auto", "cpu"):
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device must name a GPU torch can see, got {show(device)}: no GPU is visible "
                              "(torch.cuda.is_available() is false); use device=cpu or device=auto")
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device must be one of cuda:0 to cuda:{count - 1} ({count} GPU(s) visible), "
                              f"got {show(device)}")
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device must name a device torch can see, got 'mps': MPS is not available here; "
                          "use device=cpu or device=auto")


# --- override keys (before hydra composes) ---------------------------------------------------

def check_key_path(values: Mapping[str, Any], key: str, adding: bool = False) -> None:
    """Raise :class:`ConfigError` when the dotted ``key`` is not in ``values`` (a plain config):
    ``unknown key <key up to the first missing part>; valid keys: <the keys at that place>``.
    ``adding`` (an override with ``+``): a missing key is fine, an existing one is the error."""
    node: Any = values
    parts = key.split(".")
    for index, part in enumerate(parts):
        here, parent = ".".join(parts[: index + 1]), ".".join(parts[:index])
        if isinstance(node, Mapping):
            if part not in node:
                if adding:
                    return
                raise ConfigError(unknown_key_message(here, node))
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif adding:
            return
        else:
            raise ConfigError(f"unknown key {here}; {parent} holds a value ({show(node)}), not keys")
    if adding:
        raise ConfigError(f"+{key}: {key} is already in the config; set it without the '+': {key}=...")


def set_key_path(values: Dict[str, Any], key: str, value: Any = None, delete: bool = False) -> None:
    """Set (or delete) the dotted ``key`` in the plain config ``values``, making missing sections."""
    node: Any = values
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(node, dict):
        if delete:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value


# --- everything -------------------------------------------------------------------------------

def _resolved(cfg: Any) -> Dict[str, Any]:
    """``cfg`` as plain Python values, its interpolations resolved (a bad one: a one-line error)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        values = plain(cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "the config"
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{key}: cannot be resolved: {message}") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"the config must be a mapping, got {show(values)}")
    return dict(values)


def validate(cfg: Any) -> None:
    """Check every key and value of the sweep's config ``cfg`` (a ``DictConfig`` or a mapping);
    raise :class:`ConfigError` with a one-line message for the first problem."""
    values = _resolved(cfg)
    check_section("", values, TOP_LEVEL)
    check_device(values["device"], "here" if values["launcher"].get("name") != "slurm" else "cluster")

    profile = values["profile"]
    check_section("profile", profile, PROFILE, PROFILE_OPTIONAL)
    sizes = zoo_sizes()
    problem = check_value("profile.size", profile["size"], rule("str", choices=tuple(sizes)))
    if problem:
        raise ConfigError(problem)
    if not profile["recipes"]:
        raise ConfigError("profile.recipes must hold at least one recipe, got {}")
    for name, recipe in profile["recipes"].items():
        check_recipe_section(f"profile.recipes.{name}", recipe)

    launcher = values["launcher"]
    problem = check_value("launcher.name", launcher.get("name"), rule("str", choices=tuple(LAUNCHERS)))
    if problem:
        raise ConfigError(problem)
    if launcher["name"] in LAUNCHER_SCHEMAS:
        check_section("launcher", launcher, LAUNCHER_SCHEMAS[launcher["name"]])

    data = values["data"]
    problem = check_value("data.name", data.get("name"), rule("str", choices=tuple(DATASETS.list())))
    if problem:
        raise ConfigError(problem)
    check_arguments("data", {k: v for k, v in data.items() if k != "name"}, DATASETS, data["name"],
                    counts=DATA_COUNTS, other_keys=("name",))

    check_methods("explainers", values["explainers"], EXPLAINERS)
    check_methods("metrics", values["metrics"], METRICS)
    for model, arguments in (values["model_args"] or {}).items():
        if arguments is not None and not isinstance(arguments, Mapping):
            raise ConfigError(f"model_args.{model} must be a mapping of the model's builder arguments, "
                              f"got {show(arguments)}")
