"""Training with a checkpoint cache keyed by everything that determines the weights.

A :class:`TrainSpec` names the model, its size, the data, the recipe and the seed; its hash is the
cache key. ``train_model`` returns at once on a cache hit, resumes from ``last.pt`` after an
interruption, and otherwise trains with a progress bar, checkpointing at the end of every epoch and
every ``checkpoint_every_s`` seconds within one, and records the top-1 test accuracy with the final
weights.

``last.pt`` holds the weights, the optimiser's state, the position within the epoch (the steps done
and the images seen in the epoch's shuffled order), the epoch's running loss and accuracy sums, the
state of the epoch's generator (shuffling and augmentation) and of the global random number
generators (torch's, CUDA's on a GPU, numpy's and Python's: dropout and the like). A run resumed
from it continues at the next step of the same order and, on a CPU, ends with weights bit-identical
to those of an uninterrupted run.

Augmentation (``augment: crop_flip``): images smaller than 64 pixels on a side get CIFAR's random
crop of the image zero-padded by 4 pixels; larger ones (ImageNet-style data) a random resized crop
(a crop of 8 % to 100 % of the area, aspect ratio 3/4 to 4/3, resized bilinearly to the input
size). Both then flip horizontally with probability 1/2. The draws come from the epoch's generator.

A recipe's learning-rate ``schedule`` (after ``warmup_epochs`` of linear warm-up from ``lr / W`` to
``lr``, ``W`` the warm-up steps):

- ``constant``: ``lr`` throughout;
- ``cosine``: ``lr * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of the post-warm-up steps done,
  updated every step;
- ``step``: ``lr * gamma ** k`` in epoch ``e`` (counted from 0), ``k`` the number of ``milestones``
  ``<= e``: the rate is multiplied by ``gamma`` when epoch ``m`` begins, for each milestone ``m``
  (PyTorch's ``MultiStepLR`` stepped once per epoch). ``milestones`` (increasing epochs ``>= 1``)
  and ``gamma`` (in ``(0, 1]``) are recipe keys that only this schedule takes; a milestone at or
  past ``epochs`` never applies.
"""
from __future__ import annotations

import bisect
import functools
import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from interpbench import progress as status
from interpbench.core import TrainSpec
from interpbench.data import load_dataset
from interpbench.data.base import Dataset, LazySplit, Split, to_float
from interpbench.engine.weights import WeightsError, load_weights, weights_ref
from interpbench.integrity import (
    load_verified,
    remove_with_sidecar,
    sha256_file,
    sidecar_path,
    trained_record,
    write_sidecar,
)
from interpbench.storage import atomic_torch_save, atomic_write_json, plain
from interpbench.zoo import MODELS, ZooModel, create_model

RECIPE_KEYS = {
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "epochs", "schedule",
    "warmup_epochs", "augment", "max_train_images",
}
# Keys only the step schedule takes (a recipe without them keeps its cache key).
STEP_KEYS = ("milestones", "gamma")
OPTIONAL_RECIPE_KEYS = set(STEP_KEYS)


# "auto" takes the dataset's own choice (none for synthetic, crop_flip for CIFAR and folders).
AUGMENTS = ("auto", "none", "crop_flip")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step")
# Seconds between the checkpoints written within an epoch (``train_model``'s default).
CHECKPOINT_EVERY_S = 600.0
# Images at least this many pixels on each side get the random resized crop, smaller ones pad-and-crop.
RESIZED_CROP_MIN_SIDE = 64


def check_recipe(recipe: Dict[str, Any]) -> None:
    valid = RECIPE_KEYS | OPTIONAL_RECIPE_KEYS
    missing, unknown = RECIPE_KEYS - set(recipe), set(recipe) - valid
    if missing or unknown:
        raise ValueError(
            f"training recipe has missing keys {sorted(missing)} and unknown keys {sorted(unknown)}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    if recipe["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{recipe['optimizer']}'; valid optimizers: {', '.join(OPTIMIZERS)}")
    if recipe["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule '{recipe['schedule']}'; valid schedules: {', '.join(SCHEDULES)}")
    if recipe["augment"] not in AUGMENTS:
        raise ValueError(f"unknown augment '{recipe['augment']}'; valid augments: {', '.join(AUGMENTS)}")
    check_schedule(recipe)


def check_schedule(recipe: Dict[str, Any], where: str = "") -> None:
    """The step schedule's keys: ``milestones`` and ``gamma`` are needed by ``schedule: step`` and
    taken by no other schedule. ``where`` (e.g. ``profile.recipes.coda``) prefixes the messages."""
    head, key = (f"{where}: ", f"{where}.") if where else ("", "")
    present = [name for name in STEP_KEYS if name in recipe]
    if recipe["schedule"] != "step":
        if present:
            verb = "apply" if len(present) > 1 else "applies"
            raise ValueError(f"{head}{' and '.join(present)} {verb} to schedule 'step' only, got schedule "
                             f"'{recipe['schedule']}'; set schedule: step or remove {', '.join(present)}")
        return
    missing = [name for name in STEP_KEYS if name not in recipe]
    if missing:
        raise ValueError(f"{head}schedule 'step' needs milestones (epochs) and gamma (the factor at each); "
                         f"missing: {', '.join(missing)}")
    milestones = recipe["milestones"]
    epochs_ok = (isinstance(milestones, Sequence) and not isinstance(milestones, str) and len(milestones) > 0
                 and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones)
                 and all(a < b for a, b in zip(milestones, list(milestones)[1:])))
    if not epochs_ok:
        shown = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else milestones
        raise ValueError(f"{key}milestones must be a non-empty list of increasing epochs (integers >= 1), "
                         f"got {shown!r}")
    gamma = recipe["gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(f"{key}gamma must be a number in (0, 1], got {gamma!r}")


def build_model(spec: TrainSpec, dataset: Dataset) -> ZooModel:
    """The untrained model of ``spec``; its ``model_args`` override the data's arguments (``mean`` and
    ``std``, for weights trained with other statistics)."""
    model = create_model(spec.model, size=spec.size, **{**dataset.model_config(), **plain(spec.model_args)})
    if getattr(model, "channels_last", False):  # faster convolutions for this family
        model = model.to(memory_format=torch.channels_last)
    return model


def multiply_accumulates(model: torch.nn.Module, input_size) -> int:
    """Multiply-accumulates of one forward pass of one image through convolutions and linears."""
    total = [0]

    def count(module: torch.nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.weight[0].numel()
            total[0] += per_output * output[0].numel()
        elif isinstance(module, torch.nn.Linear):
            total[0] += module.weight.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total[0]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip of ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [B, H + 2p, W + 2p, C]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h)).view(b, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, w)
    out = padded[torch.arange(b).view(b, 1, 1), rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def resized_crop_boxes(
    count: int, height: int, width: int, generator: torch.Generator,
    scale: Tuple[float, float] = (0.08, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top, left, crop_height, crop_width)`` (int64 ``[count]`` each) of random crops of a
    ``height x width`` image: for each, the first of ``attempts`` draws of an area fraction (uniform
    in ``scale``) and an aspect ratio width / height (log-uniform in ``ratio``) whose rounded box fits
    in the image, at a uniformly drawn position; when none fits, the central crop with the image's
    aspect ratio clamped to ``ratio``. The number of draws from ``generator`` depends on ``count``
    only."""
    draws = torch.rand(count, attempts, 2, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * draws[..., 0]
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * draws[..., 1])
    crop_w = torch.round(torch.sqrt(height * width * area * aspect))
    crop_h = torch.round(torch.sqrt(height * width * area / aspect))
    fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first attempt that fits (0: none does)
    found = fits.any(dim=1)
    crop_w, crop_h = crop_w.gather(1, first).squeeze(1).long(), crop_h.gather(1, first).squeeze(1).long()
    if width / height < min(ratio):
        central = (int(round(width / min(ratio))), width)
    elif width / height > max(ratio):
        central = (height, int(round(height * max(ratio))))
    else:
        central = (height, width)
    crop_h = torch.where(found, crop_h, torch.tensor(central[0]))
    crop_w = torch.where(found, crop_w, torch.tensor(central[1]))
    place = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(place[:, 0] * (height - crop_h + 1)).long()
    left = torch.floor(place[:, 1] * (width - crop_w + 1)).long()
    top = torch.where(found, top, (height - crop_h) // 2)
    left = torch.where(found, left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def _sample_axis(start: torch.Tensor, length: torch.Tensor, size: int) -> Tuple[torch.Tensor, ...]:
    """Bilinear sampling along one axis of ``size`` outputs from the box ``[start, start + length)``
    (``[B]`` each), half-pixel centres as in ``F.interpolate(..., align_corners=False)``, clamped at
    the box's edges: the lower and upper source indices ``[B, size]`` and the upper one's weight."""
    position = (torch.arange(size, dtype=torch.float64) + 0.5).view(1, size)
    source = start.view(-1, 1) + position * (length.view(-1, 1).double() / size) - 0.5
    last = (start + length - 1).view(-1, 1)
    source = torch.minimum(torch.maximum(source, start.view(-1, 1).double()), last.double())
    lower = torch.floor(source).long()
    upper = torch.minimum(lower + 1, last)
    return lower, upper, source - lower


def resized_crops(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, crop_h: torch.Tensor,
                  crop_w: torch.Tensor) -> torch.Tensor:
    """The box ``[top, top + crop_h) x [left, left + crop_w)`` of each image of ``[B, C, H, W]``,
    resized bilinearly to ``H x W`` (as ``F.interpolate(crop, (H, W), mode="bilinear")``; a crop of
    the whole image is the image itself)."""
    b, c, h, w = x.shape
    lower, upper, weight = _sample_axis(top, crop_h, h)
    weight = weight.to(x.dtype).view(b, 1, h, 1)
    rows = torch.lerp(x.gather(2, lower.view(b, 1, h, 1).expand(b, c, h, w)),
                      x.gather(2, upper.view(b, 1, h, 1).expand(b, c, h, w)), weight)
    lower, upper, weight = _sample_axis(left, crop_w, w)
    weight = weight.to(x.dtype).view(b, 1, 1, w)
    return torch.lerp(rows.gather(3, lower.view(b, 1, 1, w).expand(b, c, h, w)),
                      rows.gather(3, upper.view(b, 1, 1, w).expand(b, c, h, w)), weight)


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator,
                             scale: Tuple[float, float] = (0.08, 1.0),
                             ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Batched random resized crop (see :func:`resized_crop_boxes`; resized to the input size) and
    horizontal flip of ``[B, C, H, W]``, for ImageNet-style training."""
    b, _, h, w = x.shape
    out = resized_crops(x, *resized_crop_boxes(b, h, w, generator, scale, ratio))
    flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The ``crop_flip`` augmentation of ``[B, C, H, W]``: a random resized crop for images with
    both sides at least ``RESIZED_CROP_MIN_SIDE``, else the 4-pixel pad-and-crop; then a flip."""
    if min(x.shape[-2:]) >= RESIZED_CROP_MIN_SIDE:
        return random_resized_crop_flip(x, generator)
    return random_crop_flip(x, generator)


def training_subset(split: Split, limit: Optional[int], seed: int) -> "Split | LazySplit":
    """The first ``limit`` images of a seeded permutation (all images when ``limit`` is None); a
    lazy subset that copies only the batches taken from it, so that parallel jobs share the
    memory-mapped data."""
    if limit is None or limit >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.lazy_subset(order[:limit])


def learning_rate(recipe: Dict[str, Any], step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser ``step`` (counted from 0) of ``total_steps`` (see the module
    docstring for the schedules)."""
    warmup = int(recipe["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return recipe["lr"] * (step + 1) / warmup
    if recipe["schedule"] == "constant":
        return recipe["lr"]
    if recipe["schedule"] == "step":
        passed = bisect.bisect_right(list(recipe["milestones"]), step // steps_per_epoch)
        return recipe["lr"] * recipe["gamma"] ** passed
    progress = (step - warmup) / max(1, total_steps - warmup)
    return recipe["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: ZooModel, recipe: Dict[str, Any]) -> torch.optim.Optimizer:
    parameters = model.trainable_parameters()
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; its recipe needs epochs: 0")
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    return torch.optim.SGD(
        parameters, lr=recipe["lr"], momentum=recipe["momentum"],
        nesterov=bool(recipe["nesterov"]) and recipe["momentum"] > 0,
        weight_decay=recipe["weight_decay"],
    )


@torch.no_grad()
def evaluate_accuracy(model: ZooModel, split: Split, device: torch.device, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``split``."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = to_float(split.images[start : start + batch_size].to(device))
        y = split.labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(split))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_model(
    spec: TrainSpec,
    store: Path,
    device: str = "auto",
    progress: bool = True,
    stop_after_epochs: Optional[int] = None,
    checkpoint_every_s: Optional[float] = CHECKPOINT_EVERY_S,
    stop_after_steps: Optional[int] = None,
) -> Dict[str, Any]:
    """Train ``spec`` unless its checkpoint exists; return the checkpoint's record.

    ``last.pt`` is written at the end of every epoch and, within an epoch, after the first step that
    ends ``checkpoint_every_s`` seconds or more after the last write (0 or None: at epoch ends only);
    an interrupted run resumes from it. ``stop_after_epochs`` and ``stop_after_steps`` (optimiser
    steps, counted in this call) end the run early, as a preempted or killed job would, leaving
    ``last.pt`` at that point; they return ``{"finished": False, "epoch", "folder"}`` (the epochs
    finished), ``stop_after_steps`` with ``"step"`` too (the steps done in the next epoch). A corrupt
    checkpoint (``record.json`` off its schema, ``model.pt`` off its sha256) is quarantined and the
    model trained again; a corrupt ``last.pt`` is quarantined and the training starts over.
    """
    every = checkpoint_every_s
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float))
                              or not every >= 0 or math.isinf(every)):
        raise ValueError(f"checkpoint_every_s must be a finite number of seconds >= 0, or None (0 and None: "
                         f"checkpoints at epoch ends only), got {every!r}")
    if spec.weights is None:  # loaded from a file: no recipe runs
        check_recipe(spec.recipe)
    folder = spec.folder(store)
    record = trained_record(folder, Path(store))
    if record is not None:
        status.report("load", model=spec.model)
        return record
    with training_lock(folder):  # one trainer per checkpoint; the others wait, then read it
        record = trained_record(folder, Path(store))
        if record is not None:
            status.report("load", model=spec.model)
            return record
        return _train(spec, Path(store), folder, device, progress, stop_after_epochs, stop_after_steps,
                      float(every or 0.0))


@contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (its ``train.lock`` file) held by one process at a time."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rng_states(device: torch.device) -> Dict[str, Any]:
    """The states of the global random number generators: torch's, CUDA's (on a GPU), numpy's and
    Python's."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_states` returned (CUDA's only on a GPU with as many devices)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and device.type == "cuda" and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_last(path: Path, state: Dict[str, Any]) -> None:
    """Write the training checkpoint ``path``, then its sidecar manifest. The old manifest is removed
    first, so that a kill between the two writes leaves a checkpoint without a manifest (which loading
    checks) rather than one with another checkpoint's manifest (which would be quarantined)."""
    try:
        sidecar_path(path).unlink()
    except FileNotFoundError:
        pass
    atomic_torch_save(state, path)
    write_sidecar(path)  # after it: its size and sha256, checked on resume


def _train(spec: TrainSpec, store: Path, folder: Path, device: str, progress: bool,
           stop_after_epochs: Optional[int], stop_after_steps: Optional[int],
           checkpoint_every_s: float) -> Dict[str, Any]:
    from tqdm import tqdm

    recipe = plain(spec.recipe)
    torch_device = resolve_device(device)
    dataset = load_dataset(spec.data)
    if spec.weights is not None:
        return _load_from_weights(spec, folder, dataset, torch_device)
    parent = None
    if spec.parent is not None:  # trained (or found) first; the derived model starts from it
        parent, _ = load_trained(spec.parent, store, dataset, device=device, progress=progress,
                                 checkpoint_every_s=checkpoint_every_s)
    torch.manual_seed(spec.seed)
    model = build_model(spec, dataset).to(torch_device)
    train_split = training_subset(dataset.train, recipe["max_train_images"], spec.seed)
    n, batch, epochs = len(train_split), int(recipe["batch_size"]), int(recipe["epochs"])
    steps_per_epoch = math.ceil(n / batch)
    total_steps = steps_per_epoch * epochs
    # a corrupt last.pt (off its sidecar's sha256, or not loading) is quarantined: no resume
    last = folder / "last.pt"
    state = load_verified(last, store, functools.partial(_load_last, steps_per_epoch=steps_per_epoch))
    resume = state is not None
    fit_seconds = 0.0  # converting or fitting the derived model on its parent (k-means: the whole fit)
    if parent is not None and not resume:
        status.report("fit", force=True, model=spec.model)
        began = time.time()
        model.init_from_parent(parent, train_split)
        fit_seconds = time.time() - began
    optimizer = make_optimizer(model, recipe) if epochs > 0 else None  # 0: fitted only
    augment = dataset.augment if recipe["augment"] == "auto" else recipe["augment"]

    start_epoch, start_step, history, seconds = 0, 0, [], 0.0
    resumed = []  # the epochs finished when an interrupted run (preempted, timed out, killed) went on
    resumed_steps = []  # the optimiser steps done then (counted over all epochs)
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
        start_step = int(state.get("step", 0))
        resumed = state.get("resumed_at_epochs", []) + [start_epoch]
        resumed_steps = state.get("resumed_at_steps", []) + [start_epoch * steps_per_epoch + start_step]
        if "rng" in state:  # dropout and the like go on as they would have
            set_rng_states(state["rng"], torch_device)
        where = (f"in epoch {start_epoch + 1} after step {start_step}/{steps_per_epoch}" if start_step
                 else f"after epoch {start_epoch}")
        print(f"{spec.model}: resuming {where} from {last}", flush=True)

    def checkpoint(epoch: int, **position: Any) -> None:
        save_last(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "steps_per_epoch": steps_per_epoch, "rng": rng_states(torch_device),
                         "history": history, "resumed_at_epochs": resumed, "resumed_at_steps": resumed_steps,
                         **position})

    steps_run, last_write = 0, time.monotonic()
    for epoch in range(start_epoch, epochs):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            return {"finished": False, "epoch": epoch, "folder": str(folder)}
        if stop_after_steps is not None and steps_run >= stop_after_steps:
            return {"finished": False, "epoch": epoch, "step": 0, "folder": str(folder)}
        began = time.time()
        model.train()
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        first, loss_sum, correct, seen = 0, 0.0, 0, 0
        if epoch == start_epoch and start_step:  # within the epoch: its order, at the saved step
            first, loss_sum, correct, seen = start_step, state["loss_sum"], state["correct"], state["samples"]
            generator.set_state(state["generator"])
        bar = tqdm(range(first, steps_per_epoch), desc=f"{spec.model} epoch {epoch + 1}/{epochs}",
                   total=steps_per_epoch, initial=first, disable=not progress, leave=False, mininterval=1.0)
        for step in bar:
            index = order[step * batch : (step + 1) * batch]
            x = to_float(train_split.images[index])
            if augment == "crop_flip":
                x = crop_flip(x, generator)
            x, y = x.to(torch_device), train_split.labels[index].to(torch_device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, epoch * steps_per_epoch + step, total_steps, steps_per_epoch)
            logits = model(x)
            loss = model.loss(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{spec.model}: loss became {float(loss)} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(index)
            steps_run += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            status.report("train", model=spec.model, epoch=epoch + 1, epochs=epochs, step=step + 1,
                          steps=steps_per_epoch, loss=loss_sum / seen, accuracy=correct / seen)
            if step + 1 == steps_per_epoch:
                continue  # the epoch's end writes the checkpoint
            stopping = stop_after_steps is not None and steps_run >= stop_after_steps
            if stopping or (checkpoint_every_s > 0 and time.monotonic() - last_write >= checkpoint_every_s):
                checkpoint(epoch, step=step + 1, samples=seen, loss_sum=loss_sum, correct=correct,
                           generator=generator.get_state(), seconds=seconds + time.time() - began)
                last_write = time.monotonic()
            if stopping:
                bar.close()
                return {"finished": False, "epoch": epoch, "step": step + 1, "folder": str(folder)}
        bar.close()
        seconds += time.time() - began
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen})
        checkpoint(epoch + 1, step=0, seconds=seconds)
        last_write = time.monotonic()
        status.report("train", force=True, model=spec.model, epoch=epoch + 1, epochs=epochs,
                      step=steps_per_epoch, steps=steps_per_epoch, loss=loss_sum / seen,
                      accuracy=correct / seen)

    accuracy = evaluate_accuracy(model, dataset.test, torch_device)
    record = {
        "model": spec.model, "key": spec.key(), "spec": spec.identity(), "config": plain(model.config),
        "test_accuracy": accuracy, "test_images": len(dataset.test), "train_images": n,
        "history": history, "train_seconds": round(seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "device": str(torch_device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in model.trainable_parameters()), "finished": True,
        "resumed_at_epochs": resumed, "resumed_at_steps": resumed_steps,
    }
    atomic_torch_save({"model": model.state_dict(), "record": record}, folder / "model.pt")
    record = {**record, "model_sha256": sha256_file(folder / "model.pt")}  # checked on every read
    atomic_write_json(folder / "record.json", record)  # last: marks the checkpoint complete
    remove_with_sidecar(last)
    status.report("trained", force=True, model=spec.model, test_accuracy=accuracy)
    return record


def _load_from_weights(spec: TrainSpec, folder: Path, dataset: Dataset, device: torch.device) -> Dict[str, Any]:
    """No training: the model with the weights of ``spec.weights`` (checked against the hash the spec
    was planned with), its accuracy, and the record saying where they came from."""
    ref = weights_ref(spec.weights["path"])
    if ref["sha256"] != spec.weights["sha256"]:
        raise WeightsError(f"weights {ref['path']} changed since the sweep was planned (sha256 "
                           f"{ref['sha256'][:16]}, planned {spec.weights['sha256'][:16]}); run the sweep again")
    status.report("load", force=True, model=spec.model)
    began = time.time()
    model = load_weights(build_model(spec, dataset), ref["path"], name=spec.model).to(device)
    accuracy = evaluate_accuracy(model, dataset.test, device)
    record = {
        "model": spec.model, "key": spec.key(), "spec": spec.identity(), "config": plain(model.config),
        "test_accuracy": accuracy, "test_images": len(dataset.test), "train_images": 0, "history": [],
        "train_seconds": 0.0, "device": str(device), "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": 0, "finished": True, "resumed_at_epochs": [], "weights": ref,
        "load_seconds": round(time.time() - began, 1),
    }
    atomic_torch_save({"model": model.state_dict(), "record": record}, folder / "model.pt")
    record = {**record, "model_sha256": sha256_file(folder / "model.pt")}
    atomic_write_json(folder / "record.json", record)
    return record


def _load_last(path: Path, steps_per_epoch: Optional[int] = None) -> Dict[str, Any]:
    """The state ``last.pt`` holds (on the CPU: loading it into the model and the optimizer moves it to
    their device); raises if it is not a training checkpoint, or if it stands within an epoch of
    another length than ``steps_per_epoch``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model", "optimizer", "epoch", "history", "seconds") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise ValueError(f"not a training checkpoint (no {', '.join(missing)})")
    step = state.get("step", 0)
    if step:
        missing = [k for k in ("steps_per_epoch", "samples", "loss_sum", "correct", "generator") if k not in state]
        if missing:
            raise ValueError(f"stands at step {step} of epoch {state['epoch'] + 1} without {', '.join(missing)}")
        if steps_per_epoch is not None and state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(f"stands at step {step} of an epoch of {state['steps_per_epoch']} steps; "
                             f"this training has {steps_per_epoch}")
        if not 0 < step < state["steps_per_epoch"]:
            raise ValueError(f"stands at step {step}, outside an epoch of {state['steps_per_epoch']} steps")
    return state


def load_trained(spec: TrainSpec, store: Path, dataset: Dataset, device: str = "auto",
                 progress: bool = False, checkpoint_every_s: Optional[float] = CHECKPOINT_EVERY_S,
                 ) -> Tuple[ZooModel, Dict[str, Any]]:
    """The trained model of ``spec`` (in eval mode) and its record; trains it first if needed
    (``checkpoint_every_s`` as in :func:`train_model`)."""
    record = train_model(spec, store, device=device, progress=progress, checkpoint_every_s=checkpoint_every_s)
    model = build_model(spec, dataset)
    state = torch.load(spec.folder(store) / "model.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(resolve_device(device)).eval(), record


def default_recipe_name(model: str) -> str:
    return MODELS.info(model).get("recipe", "resnet_standard")
