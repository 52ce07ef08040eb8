"""The Python API: score one model's maps with one metric, or run a sweep and get its leaderboard.

    result = interpbench.score(model, images, labels, explainer="gradcam", metric="pixel_removal")
    result.mean, result.scores, result.curve

    board = interpbench.run(zoo=["fa_cnn", "resnet18"], store="/tmp/interpbench", launcher="debug")

:func:`score` explains and scores the way a sweep's cell does (the predicted class by default, the
same batches), without a store; :func:`explain` gives the maps alone. :func:`run` composes the
same hydra config as ``interpbench sweep`` from overrides or keyword options, runs it and returns
the leaderboard as a ``pandas.DataFrame`` (the rows and columns of ``leaderboard.csv``, built from
the stored cells); a sweep that does not finish raises :class:`SweepError`.
"""
from __future__ import annotations

import contextlib
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from interpbench.cli import CONFIG_DIR, group_options, group_override_problem, override_key_problem, register_configs
from interpbench.config import ConfigError
from interpbench.core import TARGETS, CellResult, explainer_label_of
from interpbench.engine.evaluate import predict
from interpbench.engine.plan import plan_sweep
from interpbench.explainers import EXPLAINERS
from interpbench.images import to_float
from interpbench.integrity import cell_result
from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch
from interpbench.report.tables import pivot, tidy_table
from interpbench.storage import work_dir
from interpbench.sweep import in_sweep_store, run_sweep
from interpbench.zoo.base import ZooModel

# --- scoring maps --------------------------------------------------------------------------------


@dataclass
class Scores:
    """What :func:`score` returns: one metric's scores of one explainer's maps."""

    explainer: str  # the explainer's label: its name, plus the arguments that differ from the defaults
    metric: str  # the metric's label (its leaderboard column)
    higher_is_better: bool
    scores: torch.Tensor  # [N] one score per image (NaN where undefined for an image)
    mean: float  # the mean over the images, NaN skipped (the leaderboard's number)
    curve: Optional[torch.Tensor]  # [F] the mean curve for curve metrics, else None
    curve_x: Optional[List[float]]  # the curve's x-axis, else None
    saliency: torch.Tensor  # [N, H, W] the scored maps
    target: torch.Tensor  # [N] the class each map explains
    flag: Optional[str] = None  # the metric's warning for this mean (model randomisation), if any


def as_images(images: torch.Tensor) -> torch.Tensor:
    """``images [N, 3, H, W]`` as float in ``[0, 1]``: uint8 is divided by 255, float is checked."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W]; got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: give at least one image")
    if images.dtype == torch.uint8:
        return to_float(images)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1]; got {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"float images must lie in [0, 1]; got values from {float(images.min()):g} "
                         f"to {float(images.max()):g} (uint8 images are divided by 255 here)")
    return images.float()


@contextlib.contextmanager
def evaluating(model: ZooModel) -> Iterator[None]:
    """``model`` in eval mode for the block (batch norms use their running statistics), then back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_targets(model: ZooModel, x: torch.Tensor, labels: Optional[torch.Tensor],
                    target: Union[str, torch.Tensor, None], batch_size: int) -> torch.Tensor:
    """The class each map explains: ``"predicted"`` (or ``None``), ``"label"``, or class indices ``[N]``."""
    if target is None or (isinstance(target, str) and target == "predicted"):
        return predict(model, x, batch_size)
    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(f"unknown target '{target}'; valid targets: {', '.join(TARGETS)} or class indices")
        if labels is None:
            raise ValueError("target='label' needs the labels")
        target = labels
    target = torch.as_tensor(target, dtype=torch.long).reshape(-1).cpu()
    if target.shape[0] != x.shape[0]:
        raise ValueError(f"target has {target.shape[0]} classes for {x.shape[0]} images")
    return target


def make_explainer(model: ZooModel, explainer: str, explainer_args: Optional[Mapping[str, Any]]) -> Any:
    """The registered explainer ``explainer`` built with ``explainer_args``; it must apply to ``model``."""
    made = EXPLAINERS.create(explainer, **dict(explainer_args or {}))
    if not made.applies_to(model):
        applicable = [name for name in EXPLAINERS.list() if EXPLAINERS.create(name).applies_to(model)]
        raise ValueError(f"explainer '{explainer}' does not apply to {type(model).__name__}; "
                         f"applicable explainers: {', '.join(applicable)}")
    return made


def explain(model: ZooModel, images: torch.Tensor, explainer: str = "gradcam",
            target: Union[str, torch.Tensor, None] = None, labels: Optional[torch.Tensor] = None,
            batch_size: int = 250, progress: bool = False, **explainer_args: Any) -> torch.Tensor:
    """Maps ``[N, H, W]`` (on the CPU) of ``explainer`` for ``images`` (uint8, or float in ``[0, 1]``).

    ``target``: the predicted class (``None`` or ``"predicted"``, as a sweep), ``"label"`` (needs
    ``labels``) or class indices ``[N]``. ``explainer_args`` go to the explainer (the sweep's
    ``explainers.<name>.*``). The model runs in eval mode and is put back in its mode afterwards.
    """
    x = as_images(images)
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    made = make_explainer(model, explainer, explainer_args)
    with evaluating(model):
        targets = resolve_targets(model, x, labels, target, batch_size)
        return made.explain_all(model, x, targets, batch_size, progress=progress)


def score(model: ZooModel, images: torch.Tensor, labels: torch.Tensor, explainer: Optional[str] = "gradcam",
          metric: str = "pixel_removal", *, saliency: Optional[torch.Tensor] = None,
          target: Union[str, torch.Tensor, None] = None, masks: Optional[torch.Tensor] = None,
          explainer_args: Optional[Mapping[str, Any]] = None, batch_size: int = 250,
          progress: bool = False, **metric_args: Any) -> Scores:
    """Score ``explainer``'s maps of ``images`` by ``metric``, as a sweep's cell does.

    ``images``: ``[N, 3, H, W]``, uint8 or float in ``[0, 1]``; ``labels``: ``[N]``. ``metric_args``
    go to the metric (the sweep's ``metrics.<name>.*``), ``explainer_args`` to the explainer.
    ``saliency``: maps ``[N, H, W]`` to score instead of explaining (``explainer`` may then be
    ``None`` unless the metric explains again, as model randomisation does). ``target``: the class
    each map explains (:func:`explain`); ``None``: the class the metric asks for (average drop,
    gain and increase: their ``target`` argument, the true label by default), else the predicted
    class, as in a sweep. ``masks``: ground-truth object masks ``[N, H, W]``, which
    the localisation metrics need. Images go through the model ``batch_size`` at a time on its
    device, in eval mode (restored afterwards). Unknown names and arguments raise the registries'
    one-line errors.
    """
    x = as_images(images)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries for {x.shape[0]} images")
    scorer = METRICS.create(metric, **metric_args)
    if scorer.needs_masks and masks is None:
        raise ValueError(f"metric '{metric}' needs ground-truth masks: pass masks=[N, H, W]")
    if explainer is None and saliency is None:
        raise ValueError("give an explainer or the saliency maps to score")
    if explainer is None and scorer.needs_explainer:
        raise ValueError(f"metric '{metric}' explains again: give the explainer that made the maps")
    made = None if explainer is None else make_explainer(model, explainer, explainer_args)
    device = next(model.parameters()).device
    if target is None:
        target = getattr(scorer, "explains", None) or "predicted"
    with evaluating(model):
        targets = resolve_targets(model, x, y, target, batch_size)
        if saliency is None:
            saliency = made.explain_all(model, x, targets, batch_size, progress=progress)
        saliency = torch.as_tensor(saliency).float()
        outputs: Dict[str, List[torch.Tensor]] = {}
        for start in range(0, x.shape[0], batch_size):
            part = slice(start, start + batch_size)
            batch = Batch(model, x[part].to(device), y[part].to(device), saliency[part].to(device),
                          target=targets[part].to(device),
                          masks=None if masks is None else masks[part].to(device), explainer=made)
            for name, value in scorer.compute(batch).items():
                outputs.setdefault(name, []).append(value.detach().float().cpu())
    merged = {name: torch.cat(values) for name, values in outputs.items()}
    scores = merged["score"]
    mean = float(scores.nanmean()) if scores.numel() else float("nan")
    return Scores(
        explainer="given" if explainer is None else explainer_label_of(explainer, dict(explainer_args or {})),
        metric=scorer.label, higher_is_better=bool(scorer.higher_is_better), scores=scores, mean=mean,
        curve=merged["curve"].nanmean(0) if "curve" in merged else None, curve_x=scorer.curve_x,
        saliency=saliency.cpu(), target=targets.cpu(), flag=scorer.flag(mean))


# --- sweeps --------------------------------------------------------------------------------------


class SweepError(RuntimeError):
    """A sweep run from Python that failed; ``status`` is the exit status the command line would
    give (2: a bad config, nothing run; 1: some cells failed or are missing), ``problem`` its
    error line."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(f"sweep exited with status {status}: {problem}")
        self.status = status
        self.problem = problem


def hydra_value(value: Any) -> str:
    """``value`` in hydra's override grammar: strings quoted (so ``"a,b"`` stays one string),
    lists as ``[a,b]``, mappings as ``{k:v}``, ``None`` as ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("${", "\\${")  # a literal, not an interpolation
        # a backslash before a quote (or the closing one) is doubled; the quote itself is escaped
        text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
        return f"'{text}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot pass {type(value).__name__} {value!r} as a sweep option; "
                    "use str, int, float, bool, None, a list or a dict")


def _has_key(values: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(values, Mapping) or part not in values:
            return False
        values = values[part]
    return True


def _leaves(prefix: str, value: Any) -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` for each leaf of nested mappings (an empty mapping is a leaf)."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(f"{prefix}.{key}", item)
    else:
        yield prefix, value


def options_to_overrides(options: Mapping[str, Any], overrides: Sequence[str] = ()) -> List[str]:
    """Hydra overrides for keyword options, as they would be typed after ``interpbench sweep``.

    ``zoo=["fa_cnn", "resnet18"]`` -> ``zoo=['fa_cnn','resnet18']``; nested dicts become dotted keys
    (``profile={"eval": {"num_images": 16}}`` -> ``profile.eval.num_images=16``); a key the config
    does not have gets hydra's ``+`` (``model_args={"fa_cnn": {"depth": 3}}`` ->
    ``+model_args.fa_cnn.depth=3``). For the groups ``data``, ``profile`` and ``launcher`` a string
    chooses the option (``data="cifar10"``) and a dict sets keys in it, with ``name`` choosing
    (``data={"name": "cifar10", "root": "/data"}``). ``overrides``: the raw overrides that come
    with them (their group choices decide which keys exist).
    """
    groups = group_options()
    chosen: List[str] = [o for o in overrides if o.partition("=")[0].lstrip("+~") in groups and "=" in o]
    values: List[Tuple[str, Any]] = []
    for key, value in options.items():
        if key in groups:
            if isinstance(value, Mapping):
                rest = {k: v for k, v in value.items() if k != "name"}
                if "name" in value:
                    chosen.append(f"{key}={value['name']}")
                values.extend(_leaves(key, rest) if rest else [])
            elif isinstance(value, str):
                chosen.append(f"{key}={value}")
            else:
                raise TypeError(f"{key} takes an option name or a dict of its keys; got {value!r}")
        else:
            values.extend(_leaves(key, value))
    problem = group_override_problem(chosen)
    if problem:
        raise ConfigError(problem)
    register_configs()
    base = OmegaConf.to_container(composed(chosen), resolve=False)
    result = [c for c in chosen if c not in overrides]
    for key, value in values:
        result.append(f"{'' if _has_key(base, key) else '+'}{key}={hydra_value(value)}")
    return result


def compose_sweep_config(overrides: Sequence[str]) -> DictConfig:
    """The config ``interpbench sweep <overrides>`` runs: composed from ``interpbench/conf`` and the
    registries, with the command line's checks first (an unknown group option or key raises
    :class:`~interpbench.config.ConfigError` with the same line). Values are checked by the sweep."""
    problem = group_override_problem(overrides)
    if problem is None:
        register_configs()
        problem = override_key_problem(overrides)
    if problem:
        raise ConfigError(problem)
    return composed(overrides)


def composed(overrides: Sequence[str]) -> DictConfig:
    """hydra's composition of ``interpbench/conf`` with ``overrides`` (the registries' part stored
    first: :func:`~interpbench.cli.register_configs`); hydra's own errors become a one-line
    :class:`~interpbench.config.ConfigError`."""
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        where = f"{error.override}: " if getattr(error, "override", None) else ""  # a parse error's override
        raise ConfigError(where + (lines[0] if lines else type(error).__name__)) from None


class _ErrorLine:
    """A text stream that passes everything to ``stream`` and keeps the last ``error: ...`` line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending = ""
        self.error: Optional[str] = None

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.pending = re.split(r"[\r\n]", self.pending + text)
        for line in lines:
            if line.startswith("error: "):
                self.error = line[len("error: "):]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno: the stream's
        return getattr(self.stream, name)


@in_sweep_store
def sweep_cells(cfg: DictConfig) -> List[CellResult]:
    """The stored results of the cells of the sweep ``cfg`` that are done (what its leaderboard shows)."""
    store = work_dir(cfg.store)
    results = (cell_result(cell, store) for cell in plan_sweep(cfg).all_cells)
    return [result for result in results if result is not None]


def run(*overrides: str, **options: Any) -> pd.DataFrame:
    """Run the sweep ``interpbench sweep`` would run; return its leaderboard.

    ``overrides``: hydra overrides as typed on the command line (``"zoo=[fa_cnn,resnet18]"``,
    ``"+model_args.fa_cnn={depth: 3}"``); ``options``: the same as keyword arguments
    (``zoo=["fa_cnn", "resnet18"], metric="pixel_removal", store="/tmp/x"``; see
    :func:`options_to_overrides`). Prints what the command prints and writes the same files
    (``<results_dir>/<data>/``, relative to the current directory). Returns the leaderboard's table
    (the columns of ``leaderboard.csv``: model, explainer, seeds, accuracy, each metric's mean,
    interval, rank by mean, significance rank, tied-with-the-best flag and Holm-adjusted p-value
    against the best, the mean rank and the mean significance rank), built from the stored cells. Raises :class:`SweepError`,
    naming the exit status and the error, when the config is bad (2) or a cell fails (1).
    """
    try:
        cfg = compose_sweep_config([*overrides, *options_to_overrides(options, overrides)])
    except ConfigError as error:
        raise SweepError(2, str(error)) from None
    stderr = _ErrorLine(sys.stderr)
    with contextlib.redirect_stderr(stderr):  # type: ignore[type-var]
        status = run_sweep(cfg)
    if status:
        raise SweepError(status, stderr.error or "see the messages above")
    results = sweep_cells(cfg)  # launcher=slurm launcher.wait=false: the cells done so far
    return pivot(tidy_table(results))
