"""One cell of a sweep: a trained model, an explainer and a metric on the evaluation images.

A cell's result is one JSON file under ``<store>/cells/``, named by the cell's hash and written
atomically, with the cell's config and the git commit beside the scores. A cell whose file
exists is never recomputed (one that does not fit its schema is quarantined and computed again:
:mod:`interpbench.integrity`). Saliency maps are cached per (model, explainer, images) under
``<store>/saliency/``, so metrics that share them compute them once.

Batch sizes. A cell's ``batch_size`` is the largest batch: the maps are computed in batches that
fit in the memory available and halved when one runs out of it
(:mod:`interpbench.explainers.base`), and the metrics score batches fitted the same way (a
probe of one and two images through every metric of the suite; a batch that runs out of memory
is halved and scored again by every metric). The configured size is used whenever its estimate
fits; a smaller one only where it would not. Maps do not depend on the batch size beyond float
rounding. Most metrics score each image on its own; those that draw random numbers per batch
(``faithfulness_correlation``'s subsets, ``road``'s noise, the ``uniform`` baselines of
``pixel_flipping``, ``faithfulness_estimate`` and ``region_perturbation``) or normalise over the
batch (``ties="quantus"``) give other scores for another batch size, so a smaller batch forced
by memory changes those.

Resumable maps. While a suite's maps are computed, the maps done so far are written atomically
to ``<saliency file stem>.partial.pt`` beside the cache (with its sha256 sidecar, as the cache),
after a batch once ``checkpoint_seconds`` (default ``CHECKPOINT_SECONDS``) have passed since the
last write. A run that was killed continues after the last images written, with the batch size
recorded there (or less, if less fits now), so the final maps are bit-identical to an
uninterrupted run's where the same batch sizes fit. The partial file records a fingerprint of
the images, their classes and the model's weights: one that belongs to other inputs is removed
and the maps start over; one that is corrupt is quarantined (:mod:`interpbench.integrity`). It
is removed once the cache is written.

Progress. The job's status file (:mod:`interpbench.progress`) gets ``explain`` reports (the cell
as ``<model>/<explainer>``, the images done) while maps are computed and ``metric`` reports (the
cell as ``<model>/<explainer>/<metric>``) while they are scored, with the job's cells done so far.
"""
from __future__ import annotations

import copy
import hashlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from interpbench import progress as job_progress
from interpbench.core import TARGETS, Cell, CellResult, evaluation_indices, explainer_label_of
from interpbench.data import load_dataset
from interpbench.data.base import Dataset, to_float
from interpbench.engine.figure_inputs import store_figure_inputs
from interpbench.engine.train import load_trained, resolve_device
from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import fit_batch_size, halving_batches, is_out_of_memory
from interpbench.integrity import (
    cell_result,
    load_verified,
    quarantine,
    remove_with_sidecar,
    sidecar_path,
    torch_file,
    write_sidecar,
)
from interpbench.launch.base import last_lines
from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch
from interpbench.storage import (
    atomic_torch_save,
    atomic_write_json,
    git_commit,
    plain,
)
from interpbench.zoo.base import ZooModel

CHECKPOINT_SECONDS = 60.0  # the maps done so far are written at most this often (after a batch)
PARTIAL_VERSION = 1
PARTIAL_SUFFIX = ".partial.pt"
# The fields of a partial file, and their types.
PARTIAL_FIELDS: Dict[str, type] = {
    "version": int, "images": int, "done": int, "batch_size": int, "fingerprint": str, "maps": torch.Tensor,
}
ProgressCallback = Callable[[int, int, int], None]  # (images done, images, batch size)


def evaluation_images(dataset: Dataset, num_images: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The scored test images (float, ``[0, 1]``), their labels and masks, if any."""
    split = dataset.test.subset(evaluation_indices(len(dataset.test), num_images, seed))
    out = {"x": to_float(split.images), "y": split.labels}
    if split.masks is not None:
        out["masks"] = split.masks
    return out


@torch.no_grad()
def predict(model: ZooModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The predicted class of each image, in batches of at most ``batch_size`` (halved when one runs
    out of memory)."""
    device = next(model.parameters()).device
    classes = [predicted for _, _, predicted, _ in halving_batches(
        lambda start, stop: model(x[start:stop].to(device)).argmax(1).cpu(), x.shape[0], batch_size, device)]
    return torch.cat(classes) if classes else torch.zeros(0, dtype=torch.long)


def explain_targets(cell: Cell, model: ZooModel, images: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The class each map explains: the predicted class (default) or the true label."""
    if cell.target not in TARGETS:
        raise ValueError(f"unknown target '{cell.target}'; valid targets: {', '.join(TARGETS)}")
    return images["y"] if cell.target == "label" else predict(model, images["x"], cell.batch_size)


def make_explainer(cell: Cell, model: ZooModel):
    explainer = EXPLAINERS.create(cell.explainer, **plain(cell.explainer_args))
    if not explainer.applies_to(model):
        raise ValueError(f"explainer '{cell.explainer}' does not apply to model '{cell.train.model}'")
    return explainer


def short_name(cell: Cell, metric: bool = True) -> str:
    """``<model>/<explainer>/<metric>`` (``metric=False``: ``<model>/<explainer>``), for progress lines."""
    name = f"{cell.train.model}/{cell.explainer}"
    return f"{name}/{cell.metric}" if metric else name


# --- resumable maps ------------------------------------------------------------------------------

def partial_path(saliency_path: Path) -> Path:
    """Where the maps of an unfinished saliency cache are kept: ``<stem>.partial.pt`` beside it."""
    saliency_path = Path(saliency_path)
    return saliency_path.with_name(saliency_path.stem + PARTIAL_SUFFIX)


def maps_fingerprint(model: ZooModel, images: torch.Tensor, targets: torch.Tensor) -> str:
    """sha256 of what the maps are computed from: the images, the classes explained and the model's
    weights and buffers (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()

    def add(name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")

    add("images", images)
    add("targets", targets.long())
    for name, tensor in model.state_dict().items():
        add(name, tensor)
    return digest.hexdigest()


def partial_problem(state: Any, images: torch.Tensor) -> Optional[str]:
    """What is wrong with a loaded partial file for ``images`` ``[N, 3, H, W]``, or ``None``."""
    if not isinstance(state, dict):
        return "not a record of partial maps"
    missing = [name for name in PARTIAL_FIELDS if name not in state]
    if missing:
        return f"missing fields {', '.join(missing)}"
    for name, kind in PARTIAL_FIELDS.items():
        if not isinstance(state[name], kind) or (kind is int and isinstance(state[name], bool)):
            return f"field {name} is {type(state[name]).__name__}, expected {kind.__name__}"
    if state["version"] != PARTIAL_VERSION:
        return f"version {state['version']}; this checkout reads {PARTIAL_VERSION}"
    maps, done = state["maps"], state["done"]
    expected = (done, *images.shape[-2:])
    if tuple(maps.shape) != expected or maps.dtype != torch.float32:
        return f"maps of shape {tuple(maps.shape)} ({maps.dtype}); expected {expected} (torch.float32)"
    if state["images"] != images.shape[0] or not 0 <= done <= state["images"] or state["batch_size"] < 1:
        return (f"{done} of {state['images']} images done, in batches of {state['batch_size']}, "
                f"for {images.shape[0]} images")
    return None


def read_partial(path: Path, store: Path, images: torch.Tensor, fingerprint: str) -> Optional[Dict[str, Any]]:
    """The partial maps at ``path`` if they are sound and were computed from the same inputs
    (``fingerprint``); ``None`` otherwise: a corrupt file is quarantined, one of other inputs removed."""
    state = load_verified(path, store, torch_file)  # checked against its sidecar; corrupt: quarantined
    if state is None:
        return None
    problem = partial_problem(state, images)
    if problem is not None:
        quarantine(path, store, problem)
        return None
    if state["fingerprint"] != fingerprint:
        remove_with_sidecar(path)
        print(f"removed {path}: its maps are of other images, classes or model weights", file=sys.stderr, flush=True)
        return None
    return state


def write_partial(path: Path, maps: List[torch.Tensor], total: int, batch_size: int, fingerprint: str) -> None:
    """Write the maps done so far atomically, then their sidecar. The old sidecar goes first, so a
    crash between the two writes leaves a file that is checked by loading it."""
    done = torch.cat(maps) if maps else torch.zeros(0)
    try:
        os.unlink(sidecar_path(path))
    except FileNotFoundError:
        pass
    atomic_torch_save({"version": PARTIAL_VERSION, "images": total, "done": int(done.shape[0]),
                       "batch_size": int(batch_size), "fingerprint": fingerprint, "maps": done}, path)
    write_sidecar(path)


def compute_saliency(cell: Cell, model: ZooModel, images: Dict[str, torch.Tensor], store: Path,
                     progress: bool = False, targets: Optional[torch.Tensor] = None,
                     explainer: Any = None, checkpoint_seconds: float = CHECKPOINT_SECONDS,
                     on_progress: Optional[ProgressCallback] = None) -> torch.Tensor:
    """The maps of ``cell``'s explained group: from the cache, else computed (with ``explainer`` when
    the caller has made it already) and cached.

    The maps are computed in batches of at most ``cell.batch_size`` that fit in memory
    (:meth:`interpbench.explainers.base.Explainer.explain_batches`), continuing from the partial
    file a killed run left, and writing it after a batch once ``checkpoint_seconds`` have passed
    since the last write (0: after every batch; the module docstring). ``on_progress(done, images,
    batch size)`` is called before the first batch and after each.
    """
    store = Path(store)
    path = cell.saliency_path(store)
    cached = load_verified(path, store, torch_file)  # a corrupt cache is quarantined: computed again
    if cached is not None:
        return cached
    explainer = make_explainer(cell, model) if explainer is None else explainer
    targets = explain_targets(cell, model, images) if targets is None else targets
    x = images["x"]
    total = x.shape[0]
    partial = partial_path(path)
    fingerprint = maps_fingerprint(model, x, targets)
    state = read_partial(partial, store, x, fingerprint)
    parts: List[torch.Tensor] = []
    done, size = 0, cell.batch_size
    if state is not None:
        parts, done, size = [state["maps"]], state["done"], min(state["batch_size"], cell.batch_size)
    if on_progress is not None:
        on_progress(done, total, size)
    from tqdm import tqdm

    written = time.time()
    with tqdm(total=total, initial=done, desc=f"explaining ({cell.explainer})", disable=not progress,
              leave=False) as bar:
        for first, maps, size in explainer.explain_batches(model, x, targets, size, start=done):
            parts.append(maps)
            done = first + maps.shape[0]
            bar.update(maps.shape[0])
            if on_progress is not None:
                on_progress(done, total, size)
            if done < total and time.time() - written >= checkpoint_seconds:
                write_partial(partial, parts, total, size, fingerprint)
                parts = [torch.cat(parts)]
                written = time.time()
    saliency = torch.cat(parts) if parts else torch.zeros(0, *x.shape[-2:])
    atomic_torch_save(saliency, path)
    write_sidecar(path)  # after it: its size and sha256
    remove_with_sidecar(partial)
    return saliency


# --- scoring -------------------------------------------------------------------------------------

def metric_batch(model: ZooModel, images: Dict[str, torch.Tensor], saliency: torch.Tensor, targets: torch.Tensor,
                 part: slice, device: torch.device, explainer: Any) -> Batch:
    """The :class:`Batch` of the images ``part``, on ``device``."""
    return Batch(
        model, images["x"][part].to(device), images["y"][part].to(device), saliency[part].to(device),
        target=targets[part].to(device), masks=images["masks"][part].to(device) if "masks" in images else None,
        explainer=explainer)


def fit_metric_batch_size(metrics: Dict[str, Any], model: ZooModel, images: Dict[str, torch.Tensor],
                          saliency: torch.Tensor, targets: torch.Tensor, device: torch.device, explainer: Any,
                          limit: int) -> int:
    """The metric batch size, at most ``limit``, whose memory fits (:func:`fit_batch_size`): measured
    on the first images through every metric of ``metrics`` (copies, so that the metrics' own state
    stays as it was; a metric that fails here for another reason than memory is left out of the
    probe, and fails in the scoring)."""
    def probe(n: int) -> None:
        batch = metric_batch(model, images, saliency, targets, slice(0, n), device, explainer)
        for metric in metrics.values():
            try:
                copy.deepcopy(metric).compute(batch)
            except Exception as error:
                if is_out_of_memory(error):
                    raise

    return fit_batch_size(probe, min(limit, images["x"].shape[0]), device)


def score_batches(metrics: Dict[str, Any], model: ZooModel, images: Dict[str, torch.Tensor],
                  saliency: torch.Tensor, targets: torch.Tensor, device: torch.device, explainer: Any,
                  batch_size: int, on_metric: Optional[Callable[[str], None]] = None,
                  ) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, float], Dict[str, str]]:
    """Score the maps by every metric of ``metrics`` (key -> metric), batch by batch, each batch one
    :class:`Batch` that all of them read. The batch size is at most ``batch_size`` and fitted to
    the memory (:func:`fit_metric_batch_size`); a batch where a metric runs out of memory is
    halved and scored again by every metric. ``on_metric(key)`` is called before each metric
    scores a batch. Returns ``(outputs, seconds, errors)`` by key: each metric's outputs
    concatenated over the images (on the CPU, float), the seconds it spent, and for a metric that
    raised, its traceback's last lines (it is then left out of the rest and of ``outputs``)."""
    metrics = dict(metrics)
    total = images["x"].shape[0]
    parts: Dict[str, Dict[str, List[torch.Tensor]]] = {key: {} for key in metrics}
    seconds = {key: 0.0 for key in metrics}
    errors: Dict[str, str] = {}
    size = batch_size
    if metrics and total > 1:
        size = fit_metric_batch_size(metrics, model, images, saliency, targets, device, explainer, batch_size)

    def score(start: int, stop: int) -> Dict[str, Tuple[Dict[str, torch.Tensor], float]]:
        """Every metric still in ``metrics`` on the images ``[start, stop)``; a metric that raises
        (other than out of memory on several images, which halves the batch) leaves ``metrics``."""
        batch = metric_batch(model, images, saliency, targets, slice(start, stop), device, explainer)
        computed: Dict[str, Tuple[Dict[str, torch.Tensor], float]] = {}
        for key, metric in list(metrics.items()):
            if on_metric is not None:
                on_metric(key)
            tick = time.time()
            try:
                result = metric.compute(batch)
            except Exception as error:
                if is_out_of_memory(error) and stop - start > 1:
                    raise  # every metric scores the same images again, in half the batch
                errors[key] = last_lines(traceback.format_exc())
                del metrics[key]
                continue
            computed[key] = ({name: value.detach().float().cpu() for name, value in result.items()},
                             time.time() - tick)
        return computed

    for _, _, computed, _ in halving_batches(score, total if metrics else 0, size, device):
        for key, (result, spent) in computed.items():
            if key in metrics:
                seconds[key] += spent
                for name, value in result.items():
                    parts[key].setdefault(name, []).append(value)
        if not metrics:
            break
    outputs = {key: {name: torch.cat(values) for name, values in parts[key].items()} for key in metrics}
    return outputs, {key: seconds[key] for key in metrics}, errors


def run_cell(cell: Cell, store: Path, device: str = "auto", progress: bool = False,
             model: Optional[ZooModel] = None, record: Optional[Dict[str, Any]] = None,
             dataset: Optional[Dataset] = None) -> CellResult:
    """Compute ``cell`` unless its result file exists; return the result (errors raise)."""
    done = cell_result(cell, Path(store))  # None: missing, or corrupt and quarantined
    if done is not None:
        return done
    results, errors = run_cells([cell], store, device=device, progress=progress, model=model,
                                record=record, dataset=dataset)
    if errors:
        raise RuntimeError(errors[cell.key()])
    return results[cell.key()]


def run_cells(cells: List[Cell], store: Path, device: str = "auto", progress: bool = False,
              model: Optional[ZooModel] = None, record: Optional[Dict[str, Any]] = None,
              dataset: Optional[Dataset] = None,
              checkpoint_seconds: float = CHECKPOINT_SECONDS) -> Tuple[Dict[str, CellResult], Dict[str, str]]:
    """Compute the cells of one trained model that have no result file yet.

    Cells that share the explained images (same explainer, images and target) are computed as a
    suite: the maps once (:func:`compute_saliency`, resumable; ``checkpoint_seconds``: how often
    the maps done so far are written), and per batch of images one :class:`metrics.base.Batch`
    that all their metrics read, so perturbed images that several metrics evaluate run through the
    model once. The batches are fitted to the memory available, at most the cells' ``batch_size``
    (the module docstring). Each cell still gets its own result file. Returns ``(results by key,
    errors by key)``; a cell that raises is reported with its traceback's last lines and the
    others go on. Progress goes to the job's status file (:mod:`interpbench.progress`).
    """
    results: Dict[str, CellResult] = {}
    errors: Dict[str, str] = {}
    pending = []
    for cell in cells:
        done = cell_result(cell, Path(store))  # None: missing, or corrupt and quarantined
        if done is not None:
            results[cell.key()] = done
        else:
            pending.append(cell)
    if not pending:
        return results, errors
    specs = {cell.train.key() for cell in pending}
    if len(specs) != 1:
        raise ValueError(f"run_cells takes the cells of one trained model; got {len(specs)} models")
    dataset = dataset or load_dataset(pending[0].train.data)
    if model is None or record is None:
        model, record = load_trained(pending[0].train, store, dataset, device=device)
    torch_device = resolve_device(device)
    groups: Dict[str, List[Cell]] = {}
    for cell in pending:
        groups.setdefault(str(cell.saliency_path(store)), []).append(cell)

    def cells_done() -> int:
        return len(results) + len(errors)

    for group in groups.values():
        first = group[0]

        def explaining(images_done: int, total: int, size: int) -> None:
            job_progress.report("explain", cell=short_name(first, metric=False), explainer=first.explainer,
                                images_done=images_done, images=total, batch_size=size,
                                cells_done=cells_done(), cells=len(cells))

        try:
            began = time.time()
            images = evaluation_images(dataset, first.num_images, first.eval_seed)
            explainer = make_explainer(first, model)
            targets = explain_targets(first, model, images)
            saliency = compute_saliency(first, model, images, store, progress=progress, targets=targets,
                                        explainer=explainer, checkpoint_seconds=checkpoint_seconds,
                                        on_progress=explaining)
            explain_seconds = time.time() - began
        except Exception:
            for cell in group:
                errors[cell.key()] = last_lines(traceback.format_exc())
            continue
        # What the report's saliency grid and FA-CNN morphing figure draw, stored beside the cells
        # (interpbench.engine.figure_inputs: its own explainer, skipped when stored, never fails a cell).
        store_figure_inputs(first, model, images, dataset, store)
        metrics: Dict[str, Any] = {}
        for cell in group:
            try:
                metric = METRICS.create(cell.metric, **plain(cell.metric_args))
                if metric.needs_masks and "masks" not in images:
                    raise ValueError(f"metric '{cell.metric}' needs ground-truth masks; dataset "
                                     f"'{plain(cell.train.data).get('name')}' has none (synthetic has)")
                metrics[cell.key()] = metric
            except Exception:
                errors[cell.key()] = last_lines(traceback.format_exc())
        by_key = {cell.key(): cell for cell in group}

        def scoring(key: str) -> None:
            job_progress.report("metric", cell=short_name(by_key[key]), metric=by_key[key].metric,
                                cells_done=cells_done(), cells=len(cells))

        outputs, seconds, failed = score_batches(metrics, model, images, saliency, targets, torch_device, explainer,
                                                 first.batch_size, on_metric=scoring)
        errors.update(failed)
        for cell in group:
            if cell.key() not in outputs:
                continue
            result = build_cell_result(cell, metrics[cell.key()], outputs[cell.key()], record,
                                       seconds[cell.key()] + explain_seconds)
            atomic_write_json(cell.path(store), result.to_json())
            results[cell.key()] = result
    return results, errors


def build_cell_result(cell: Cell, metric: Any, merged: Dict[str, torch.Tensor], record: Dict[str, Any],
                seconds: float) -> CellResult:
    scores = merged["score"]
    score = float(scores.nanmean()) if scores.numel() else float("nan")
    return CellResult(
        cell=cell.identity(),
        key=cell.key(),
        model=cell.train.model,
        explainer=cell.explainer,
        explainer_label=explainer_label_of(cell.explainer, cell.explainer_args),
        metric=cell.metric,
        label=metric.label,
        higher_is_better=bool(metric.higher_is_better),
        flag=metric.flag(score),
        data=str(plain(cell.train.data).get("name")),
        seed=int(cell.train.seed),
        size=str(cell.train.size),
        score=score,
        per_image=[None if v != v else round(float(v), 6) for v in scores],
        curve_x=metric.curve_x,
        curve=None if "curve" not in merged else [float(v) for v in merged["curve"].nanmean(0)],
        num_images=int(scores.shape[0]),
        test_accuracy=float(record["test_accuracy"]),
        model_key=str(record["key"]),
        seconds=round(seconds, 2),
        git_commit=git_commit(),
        torch=torch.__version__,
    )
